"""``check-once``, ``run`` and ``config``: the commands that read the configuration."""

from __future__ import annotations

import os
import socket
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from trackssl_agent.cli.options import (
    FILE,
    config_option,
    config_options,
    family_option,
    output_format,
    output_option,
    probe_options,
    setting_option,
    setting_options,
)
from trackssl_agent.cli.progress import ProgressLine
from trackssl_agent.config import config, settings
from trackssl_agent.engine import protocols
from trackssl_agent.engine.probe import address_family
from trackssl_agent.engine.targets import read_targets_path
from trackssl_agent.errors import AgentError, ExitCode, UsageError
from trackssl_agent.log import get_logger, printable, redact

if TYPE_CHECKING:  # the cycle (and the API client) is imported only when a command needs it
    from trackssl_agent.agent.cycle_report import CycleReport
    from trackssl_agent.engine.targets import Target


def _load_config(config_path: Path | None, **values: str | float | Path | None) -> config.Config:
    """The effective Config: these options (by setting name) over the environment over
    the file."""
    options = {settings.spec(name).key or name: value for name, value in values.items()}
    return config.from_process(config_option=config_path, options=options)


def _progress_line() -> ProgressLine:
    """``done/total targets done, N failed`` on a terminal's stderr."""
    return ProgressLine(lambda c: f"{c[0]}/{c[1]} targets done, {c[2]} failed")


@click.command("check-once")
@probe_options
@click.option(
    "--targets",
    "targets_file",
    type=FILE,
    help="Local mode: probe the targets of FILE (one a line; - for stdin); no account needed.",
)
@output_option
@click.option("--dry-run", is_flag=True, help="Fetch and probe, post nothing; show results.")
@setting_option("concurrency")
@config_options
def check_once(
    timeout: float | None,
    ipv4: bool,
    ipv6: bool,
    chosen_format: str | None,
    as_json: bool,
    warn_days: int,
    crit_days: int,
    verify: bool | None,
    ca_file: Path | None,
    starttls: str,
    targets_file: Path | None,
    output_path: Path | None,
    dry_run: bool,
    concurrency: int | None,
    config_path: Path | None,
    log_level: str | None,
    log_file: Path | None,
    log_format: str | None,
) -> int:
    """Run exactly one cycle, then exit: for cron, CI and the Task Scheduler.

    With the API: fetch the domain list, probe every domain, post each result (through
    the outbox in the state dir), print a summary. With --targets FILE: probe the file's
    targets, judge each as probe does (--verify, --ca-file) and exit with the worst status;
    no account or token needed; --format openmetrics --output FILE is a file for the node
    exporter's textfile collector, --format nagios a plugin's output.
    """
    # Imported here: requests and the API client cost ~0.2 s that --version and probe skip.
    from trackssl_agent.agent import compose  # noqa: PLC0415

    fmt = output_format(as_json=as_json, chosen=chosen_format)
    _check_mode_options(targets_file, starttls=starttls, fmt=fmt, output_path=output_path)
    if targets_file is None and (verify or ca_file is not None):
        raise UsageError("--verify and --ca-file apply to --targets; with the API TrackSSL judges")
    cfg = _load_config(
        config_path, timeout=timeout, concurrency=concurrency,
        log_level=log_level, log_file=log_file, log_format=log_format,
        verify=verify, ca_file=ca_file,
    )  # fmt: skip
    family = address_family(ipv4=ipv4, ipv6=ipv6)
    local = read_targets_path(targets_file, starttls=starttls) if targets_file else None
    config.start_logging(cfg)
    if local is not None:
        return _local_mode(local, cfg, family=family, fmt=fmt, output_path=output_path,
                           warn_days=warn_days, crit_days=crit_days)  # fmt: skip
    progress = _progress_line() if sys.stderr.isatty() else None
    stop = threading.Event()
    try:
        cycle_report = compose.run_once(
            cfg, stop=stop, family=family, dry_run=dry_run, progress=progress,
            keep_results=fmt == "json" or dry_run,
        )  # fmt: skip
    finally:
        stop.set()
        if progress is not None:
            progress.end()
    now = datetime.now(UTC)
    return _render_cycle_report(cycle_report, as_json=fmt == "json", dry_run=dry_run, now=now)


def _local_mode(
    targets: list[Target],
    cfg: config.Config,
    *,
    family: socket.AddressFamily,
    fmt: str,
    output_path: Path | None,
    warn_days: int,
    crit_days: int,
) -> int:
    """``check-once --targets``: probe, judge and render as ``probe`` does (SPEC section 4a)."""
    from trackssl_agent.agent import compose  # noqa: PLC0415 - see check_once
    from trackssl_agent.cli.probe_command import judged_run  # noqa: PLC0415 - local mode only
    from trackssl_agent.verdict.judge import Policy  # noqa: PLC0415 - judging only

    # Text on a terminal streams, and is its own progress: a rewritten stderr line would
    # land in the middle of it.
    streams = fmt == "text" and output_path is None and sys.stdout.isatty()
    progress = _progress_line() if sys.stderr.isatty() and not streams else None
    return judged_run(
        targets, compose.probe_settings(cfg, family=family), concurrency=cfg.concurrency,
        policy=Policy(warn_days=warn_days, crit_days=crit_days, verify=cfg.verify),
        ca_file=cfg.ca_file, fmt=fmt, output_path=output_path, progress=progress,
    )  # fmt: skip


def _check_mode_options(
    targets_file: Path | None, *, starttls: str, fmt: str, output_path: Path | None
) -> None:
    """UsageError, before anything is probed, for an option local mode (``--targets FILE``)
    alone takes given in API mode, or an --output folder that cannot take the file."""
    if targets_file is not None:
        if output_path is not None:
            from trackssl_agent.render import output_file  # noqa: PLC0415 - local mode only

            output_file.check_writable(output_path)
        return
    if starttls != protocols.AUTO:
        raise UsageError("--starttls applies to --targets; the API decides per domain")
    if fmt in {"openmetrics", "nagios"}:
        raise UsageError(
            f"--format {fmt} applies to --targets FILE (local mode); "
            "with the API the results go to TrackSSL"
        )
    if output_path is not None:
        raise UsageError("--output applies to --targets FILE (local mode); use --json > FILE")


def _render_cycle_report(
    cycle_report: CycleReport, *, as_json: bool, dry_run: bool, now: datetime
) -> int:
    """check-once's output in API mode: results if asked, the report line, the problem."""
    if as_json or dry_run:
        # Rendering results is loaded only when they are shown (the API path posts them).
        from trackssl_agent.cli.probe_command import render_results  # noqa: PLC0415

        render_results(cycle_report.results, fmt="json" if as_json else "text", now=now)
    label = "dry run (nothing posted)" if dry_run else "check-once"
    # The problem may quote what the API sent: redacted as a log line is.
    click.echo(f"{label}: {printable(redact(cycle_report.figures()))}", err=as_json)
    if cycle_report.problem:
        click.echo(f"trackssl-agent: {printable(redact(cycle_report.problem))}", err=True)
    return int(cycle_report.exit_code)


@click.command("config")
@config_option
def show_config(config_path: Path | None) -> int:
    """Show the effective configuration, where each value comes from; the token redacted."""
    cfg = config.from_process(config_option=config_path, options={})
    rows = cfg.describe()
    width = max(len(key) for key, _value, _origin in rows)
    for key, value, origin in rows:
        click.echo(f"{key:<{width}}  {value}  [{origin}]")
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    return ExitCode.OK


@click.command()
@setting_options("interval", "timeout", "concurrency")
@family_option
@config_options
def run(
    interval: str | None,
    timeout: float | None,
    concurrency: int | None,
    ipv4: bool,
    ipv6: bool,
    config_path: Path | None,
    log_level: str | None,
    log_file: Path | None,
    log_format: str | None,
) -> int:
    """Run cycles until stopped: one at once, then one every --interval.

    SIGTERM or Ctrl-C (Ctrl-Break on Windows) stops it cleanly: no new probes, results not
    yet delivered stay in the outbox, exit 0. Another signal 2 s or more later exits at once.
    """
    from trackssl_agent.agent import scheduler  # noqa: PLC0415 - see check_once

    cfg = _load_config(
        config_path, interval=interval, timeout=timeout, concurrency=concurrency,
        log_level=log_level, log_file=log_file, log_format=log_format,
    )  # fmt: skip
    family = address_family(ipv4=ipv4, ipv6=ipv6)
    config.start_logging(cfg)
    try:
        return scheduler.run_agent(cfg, family=family, environ=os.environ)
    except AgentError as exc:
        if cfg.log_file is not None:
            # A service or a task has no console: say in the log why it stopped.
            get_logger(__name__).error("%s", exc)
        raise
