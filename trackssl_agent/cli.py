"""The command line: click commands that build inputs, call the core, and render results.

This is the only module that imports click. Exit codes follow SPEC section 2; click's own
usage errors exit 3, not click's default 2.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from trackssl_agent import __version__, config, output, protocols
from trackssl_agent.errors import AgentError, UsageError
from trackssl_agent.log import FORMATS, LEVELS, get_logger, printable, redact, setup_logging
from trackssl_agent.probe import ProbeSettings, probe_many
from trackssl_agent.report import ExitCode, Thresholds, probe_exit_code
from trackssl_agent.results import ProbeResult
from trackssl_agent.targets import Target, encode_hostname, parse_target, read_targets_file

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = 10.0


class _FilePath(click.Path):
    """A file path option that refuses a NUL byte (usage error, exit 3): ``os.stat``
    would raise ValueError on it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "\0" in value:
            self.fail("expected a path without NUL characters", param, ctx)
        return super().convert(value, param, ctx)


_FILE = _FilePath(dir_okay=False, path_type=Path)


timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=600),
    default=None,
    help="One deadline per target: DNS, connect, STARTTLS, handshake [default: 10].",
)
"""``--timeout``: None lets the configuration (or the default of 10 s) decide."""

concurrency_option = click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=None,
    help="Probes at once [default: 64].",
)
"""``--concurrency``: None lets the configuration (or the default of 64) decide."""


def family_option(func: F) -> F:
    """``-4`` / ``-6``: restrict addresses to one family."""
    func = click.option("-6", "--ipv6", "ipv6", is_flag=True, help="Only IPv6 addresses.")(func)
    return click.option("-4", "--ipv4", "ipv4", is_flag=True, help="Only IPv4 addresses.")(func)


def probe_options(func: F) -> F:
    """Options shared by ``probe`` and ``check-once`` (SPEC section 2)."""
    for decorator in reversed(
        [
            timeout_option,
            family_option,
            click.option("--json", "as_json", is_flag=True, help="Machine output (JSON)."),
            click.option(
                "--warn-days",
                type=click.IntRange(min=0),
                default=30,
                show_default=True,
                help="Exit 1 when a certificate expires within this many days.",
            ),
            click.option(
                "--crit-days",
                type=click.IntRange(min=0),
                default=7,
                show_default=True,
                help="Exit 2 when a certificate expires within this many days.",
            ),
            click.option(
                "--starttls",
                type=click.Choice(protocols.STARTTLS_CHOICES),
                default=protocols.AUTO,
                show_default=True,
                help="Dialogue before TLS: auto picks by scheme, then well-known port.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def address_family(*, ipv4: bool, ipv6: bool) -> socket.AddressFamily:
    """The socket family for ``-4`` / ``-6``."""
    if ipv4 and ipv6:
        raise UsageError("-4 and -6 exclude each other")
    if ipv4:
        return socket.AF_INET
    if ipv6:
        return socket.AF_INET6
    return socket.AF_UNSPEC


def run_probes(
    targets: Sequence[Target], settings: ProbeSettings, concurrency: int
) -> list[ProbeResult]:
    """Probe all targets concurrently; results in input order."""
    ordered: list[ProbeResult | None] = [None] * len(targets)
    for index, result in probe_many(targets, settings, concurrency=concurrency):
        ordered[index] = result
    return [r for r in ordered if r is not None]


def render_results(results: Sequence[ProbeResult], *, as_json: bool, now: datetime) -> None:
    """Print results as SPEC section 4 JSON or as readable text."""
    if as_json:
        click.echo(json.dumps([output.result_json(r, now) for r in results], indent=2))
        return
    click.echo("\n".join(output.render_text(r, now) for r in results), nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trackssl-agent", message="%(prog)s %(version)s")
def cli() -> None:
    """Watch the TLS certificates of servers inside a private network for TrackSSL."""


@cli.command()
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@probe_options
@click.option("--servername", help="SNI to send [default: the host, none for an IP literal].")
@click.option("--pem", is_flag=True, help="Print the presented chain as PEM, leaf first.")
def probe(
    targets: tuple[str, ...],
    timeout: float | None,
    ipv4: bool,
    ipv6: bool,
    as_json: bool,
    warn_days: int,
    crit_days: int,
    starttls: str,
    servername: str | None,
    pem: bool,
) -> int:
    """Probe TARGET... now and show what each presents; never talks to the cloud.

    TARGET is host, host:port, [v6]:port, or scheme://host[:port] (https, ldaps, imaps,
    pop3s, smtps, tls, smtp, submission, lmtp, imap, pop3, ftp, ldap, xmpp, xmpp-server,
    nntp, sieve, postgres, mysql, rdp, mssql).
    """
    if pem and as_json:
        raise UsageError("--pem and --json exclude each other")
    setup_logging(level="warning")
    parsed = [parse_target(text, starttls=starttls) for text in targets]
    sni = None
    if servername is not None:
        try:
            sni = encode_hostname(servername)
        except Exception as exc:
            raise UsageError(f"invalid --servername {servername!r}: {exc}") from None
        if not sni or sni.startswith("."):
            raise UsageError(f"invalid --servername {servername!r}: it must be a host name")
    settings = ProbeSettings(
        timeout=timeout or DEFAULT_TIMEOUT,
        family=address_family(ipv4=ipv4, ipv6=ipv6),
        servername=sni,
    )
    results = run_probes(parsed, settings, concurrency=64)
    now = datetime.now(UTC)
    if pem:
        for result in results:
            if result.ok:
                click.echo(output.render_pem(result), nl=False)
            else:
                click.echo(f"{result.target.text}: {result.error}", err=True)
    else:
        render_results(results, as_json=as_json, now=now)
    return int(probe_exit_code(results, Thresholds(warn_days, crit_days), now))


def config_options(func: F) -> F:
    """``--config`` and the logging options of ``run`` and ``check-once`` (SPEC section 2)."""
    for decorator in reversed(
        [
            click.option(
                "--config",
                "config_path",
                type=_FILE,
                help="Configuration file [default: $TRACKSSL_CONFIG, ./environment.txt].",
            ),
            click.option(
                "--log-level", type=click.Choice(LEVELS), default=None, help="[default: info]"
            ),
            click.option(
                "--log-file",
                type=_FILE,
                default=None,
                help="Log to this file, rotated by size [default: stderr].",
            ),
            click.option(
                "--log-format", type=click.Choice(FORMATS), default=None, help="[default: text]"
            ),
        ]
    ):
        func = decorator(func)
    return func


def _load_config(
    config_path: Path | None,
    options: dict[str, str | float | int | Path | None],
    *,
    log_level: str | None,
    log_file: Path | None,
    log_format: str | None,
) -> config.Config:
    """The effective Config: these options over the environment over the file."""
    options = {
        **options,  # the command's own options
        config.LOG_LEVEL: log_level,
        config.LOG_FILE: log_file,
        config.LOG_FORMAT: log_format,
    }
    return config.from_process(config_option=config_path, options=options)


class _ProgressLine:
    """``done/total`` on one rewritten stderr line, at most ten times a second."""

    def __init__(self) -> None:
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int, failed: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        self._shown = True
        click.echo(f"\r{done}/{total} targets done, {failed} failed", err=True, nl=False)

    def end(self) -> None:
        """Finish the line so later output starts on a fresh one."""
        if self._shown:
            click.echo("", err=True)


def _read_targets(path: Path, *, starttls: str) -> list[Target]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--targets {path}: cannot read it: {exc}") from None
    targets = read_targets_file(text.splitlines(), source=str(path), starttls=starttls)
    if not targets:
        raise UsageError(f"--targets {path}: the file names no target")
    return targets


@cli.command("check-once")
@probe_options
@click.option(
    "--targets",
    "targets_file",
    type=_FILE,
    help="Local mode: probe the targets of FILE (one a line); no account needed.",
)
@click.option("--dry-run", is_flag=True, help="Fetch and probe, post nothing; show results.")
@concurrency_option
@config_options
def check_once(
    timeout: float | None,
    ipv4: bool,
    ipv6: bool,
    as_json: bool,
    warn_days: int,
    crit_days: int,
    starttls: str,
    targets_file: Path | None,
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
    targets and report with the probe exit codes; no account or token needed.
    """
    # Imported here: requests and the API client cost ~0.2 s that --version and probe skip.
    from trackssl_agent import cycle  # noqa: PLC0415

    cfg = _load_config(
        config_path,
        {config.TIMEOUT: timeout, config.CONCURRENCY: concurrency},
        log_level=log_level, log_file=log_file, log_format=log_format,
    )  # fmt: skip
    family = address_family(ipv4=ipv4, ipv6=ipv6)
    local = _read_targets(targets_file, starttls=starttls) if targets_file else None
    if local is None and starttls != protocols.AUTO:
        raise UsageError("--starttls applies to --targets; the API decides per domain")
    config.start_logging(cfg)
    progress = _ProgressLine() if sys.stderr.isatty() else None
    stop = threading.Event()
    try:
        if local is not None:
            results = cycle.probe_all(
                local, cycle.probe_settings(cfg, family=family),
                concurrency=cfg.concurrency, stop=stop, progress=progress,
            )  # fmt: skip
        else:
            report = cycle.run_once(
                cfg, stop=stop, family=family, dry_run=dry_run, progress=progress,
                keep_results=as_json or dry_run,
            )  # fmt: skip
    finally:
        stop.set()
        if progress is not None:
            progress.end()
    now = datetime.now(UTC)
    if local is not None:
        render_results(results, as_json=as_json, now=now)
        return int(probe_exit_code(results, Thresholds(warn_days, crit_days), now))
    if as_json or dry_run:
        render_results(report.results, as_json=as_json, now=now)
    label = "dry run (nothing posted)" if dry_run else "check-once"
    click.echo(f"{label}: {report.summary()}", err=as_json)
    if report.problem:
        click.echo(f"trackssl-agent: {report.problem}", err=True)
    return int(report.exit_code)


@cli.command("config")
@click.option(
    "--config",
    "config_path",
    type=_FILE,
    help="Configuration file [default: $TRACKSSL_CONFIG, ./environment.txt].",
)
def show_config(config_path: Path | None) -> int:
    """Show the effective configuration, where each value comes from; the token redacted."""
    cfg = config.from_process(config_option=config_path, options={})
    rows = cfg.describe()
    width = max(len(key) for key, _value, _origin in rows)
    for key, value, origin in rows:
        click.echo(f"{key:<{width}}  {value}  [{origin}]")
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    return 0


@cli.command()
@click.option(
    "--interval",
    metavar="DURATION",
    default=None,
    help="Time between cycles: 90s, 30m, 4h, 1d; at least 1m [default: 4h].",
)
@timeout_option
@concurrency_option
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
    from trackssl_agent import scheduler  # noqa: PLC0415 - see check_once

    cfg = _load_config(
        config_path,
        {config.INTERVAL: interval, config.TIMEOUT: timeout, config.CONCURRENCY: concurrency},
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


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry: run the CLI and exit with SPEC section 2's codes."""
    try:
        code = cli.main(args=argv, prog_name="trackssl-agent", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except AgentError as exc:
        # printable: a message may quote outside text (an API body, a path); one line.
        click.echo(f"trackssl-agent: {printable(redact(str(exc)))}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        # The reader of stdout went away (``| head``): nothing left to say to anyone.
        sys.stderr.close()
        sys.exit(ExitCode.CRITICAL)
    except Exception as exc:
        # A bug, not a condition the agent knows: one line here, the traceback at debug level.
        get_logger(__name__).debug("unexpected error", exc_info=True)
        click.echo(
            f"trackssl-agent: internal error: {type(exc).__name__}: {printable(redact(str(exc)))}; "
            "rerun with --log-level debug for the traceback and report it",
            err=True,
        )
        sys.exit(ExitCode.CRITICAL)
    sys.exit(code if isinstance(code, int) else 0)
