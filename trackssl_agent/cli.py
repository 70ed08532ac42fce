"""The command line: click commands that build inputs, call the core, and render results.

This is the only module that imports click. Exit codes follow SPEC section 2; click's own
usage errors exit 3, not click's default 2.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from trackssl_agent import __version__, config, output, protocols, report, settings
from trackssl_agent.errors import AgentError, UsageError
from trackssl_agent.log import get_logger, printable, redact, setup_logging
from trackssl_agent.probe import ProbeSettings, address_family, probe_many
from trackssl_agent.report import Thresholds, probe_exit_code
from trackssl_agent.results import ProbeResult
from trackssl_agent.settings import Kind
from trackssl_agent.targets import Target, encode_hostname, parse_target, read_targets_path

if TYPE_CHECKING:  # cycle (and requests behind it) is imported only when a command needs it
    from trackssl_agent.cycle import CycleReport

F = TypeVar("F", bound=Callable[..., Any])


class _FilePath(click.Path):
    """A file path option that refuses a NUL byte (usage error, exit 3): ``os.stat``
    would raise ValueError on it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "\0" in value:
            self.fail("expected a path without NUL characters", param, ctx)
        return super().convert(value, param, ctx)


_FILE = _FilePath(dir_okay=False, path_type=Path)


def _click_type(row: settings.Spec) -> click.ParamType[Any] | None:
    """The click type that checks a setting's bounds at the command line."""
    if row.kind is Kind.INT:
        low, high = (None if bound is None else int(bound) for bound in (row.low, row.high))
        return click.IntRange(low, high)
    if row.kind is Kind.SECONDS:
        return click.FloatRange(row.low, row.high)
    if row.kind is Kind.CHOICE:
        return click.Choice(row.choices)
    if row.kind in settings.PATH_KINDS:
        return _FILE
    return None  # DURATION and the rest: text, checked by config with its own message


def setting_option(name: str, *, param: str | None = None) -> Callable[[F], F]:
    """The option of setting ``name``, generated from its row in ``settings.SETTINGS``.

    A setting the configuration also holds defaults to None here, so that the environment
    and the file can decide; its default is shown in the help instead.
    """
    row = settings.CONFIG if name == settings.CONFIG.name else settings.spec(name)
    if row.option is None:
        raise ValueError(f"setting {name} has no command-line option")
    keyed = row.key is not None
    shown = f" [default: {row.default}]" if keyed and row.default else ""
    return click.option(
        row.option,
        param or row.name,
        type=_click_type(row),
        default=None if keyed else settings.convert(row, row.default),
        show_default=not keyed,
        metavar="DURATION" if row.kind is Kind.DURATION else None,
        help=row.help + shown,
    )


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` so that options show in the order given."""

    def decorate(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return decorate


def setting_options(*names: str) -> Callable[[F], F]:
    """The options of several settings, in the order named."""
    return _stack(*(setting_option(name) for name in names))


config_option = setting_option(settings.CONFIG.name, param="config_path")
"""``--config``: declared once, for ``run``, ``check-once`` and ``config``."""


def family_option(func: F) -> F:
    """``-4`` / ``-6``: restrict addresses to one family."""
    func = click.option("-6", "--ipv6", "ipv6", is_flag=True, help="Only IPv6 addresses.")(func)
    return click.option("-4", "--ipv4", "ipv4", is_flag=True, help="Only IPv4 addresses.")(func)


probe_options = _stack(
    setting_option("timeout"),
    family_option,
    click.option("--json", "as_json", is_flag=True, help="Machine output (JSON)."),
    setting_options("warn_days", "crit_days"),
    click.option(
        "--starttls",
        type=click.Choice(protocols.STARTTLS_CHOICES),
        default=protocols.AUTO,
        show_default=True,
        help="Dialogue before TLS: auto picks by scheme, then well-known port.",
    ),
)
"""Options shared by ``probe`` and ``check-once`` (SPEC section 2)."""


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
    probe_settings = ProbeSettings(
        timeout=timeout or settings.DEFAULT_TIMEOUT,
        family=address_family(ipv4=ipv4, ipv6=ipv6),
        servername=sni,
    )
    results = run_probes(parsed, probe_settings, concurrency=settings.DEFAULT_CONCURRENCY)
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


config_options = _stack(config_option, setting_options("log_level", "log_file", "log_format"))
"""``--config`` and the logging options of ``run`` and ``check-once`` (SPEC section 2)."""


def _load_config(config_path: Path | None, **values: str | float | Path | None) -> config.Config:
    """The effective Config: these options (by setting name) over the environment over
    the file."""
    options = {settings.spec(name).key or name: value for name, value in values.items()}
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


@cli.command("check-once")
@probe_options
@click.option(
    "--targets",
    "targets_file",
    type=_FILE,
    help="Local mode: probe the targets of FILE (one a line); no account needed.",
)
@click.option("--dry-run", is_flag=True, help="Fetch and probe, post nothing; show results.")
@setting_option("concurrency")
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
        config_path, timeout=timeout, concurrency=concurrency,
        log_level=log_level, log_file=log_file, log_format=log_format,
    )  # fmt: skip
    family = address_family(ipv4=ipv4, ipv6=ipv6)
    local = read_targets_path(targets_file, starttls=starttls) if targets_file else None
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
            cycle_report = cycle.run_once(
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
    return _render_cycle_report(cycle_report, as_json=as_json, dry_run=dry_run, now=now)


def _render_cycle_report(
    cycle_report: CycleReport, *, as_json: bool, dry_run: bool, now: datetime
) -> int:
    """check-once's output in API mode: results if asked, the report line, the problem."""
    if as_json or dry_run:
        render_results(cycle_report.results, as_json=as_json, now=now)
    label = "dry run (nothing posted)" if dry_run else "check-once"
    click.echo(f"{label}: {cycle_report.summary()}", err=as_json)
    if cycle_report.problem:
        click.echo(f"trackssl-agent: {cycle_report.problem}", err=True)
    return int(cycle_report.exit_code)


@cli.command("config")
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
    return 0


@cli.command()
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
    from trackssl_agent import scheduler  # noqa: PLC0415 - see check_once

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


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry: run the CLI and exit with the code ``report`` decides."""
    try:
        code = cli.main(args=argv, prog_name="trackssl-agent", standalone_mode=False)
    except click.ClickException as exc:  # click.UsageError included
        exc.show()
        sys.exit(report.error_exit_code(UsageError(exc.format_message())))
    except click.Abort:  # Ctrl-C while click was reading input
        click.echo("Aborted.", err=True)
        sys.exit(report.signal_exit_code(signal.SIGINT))
    except AgentError as exc:
        # printable: a message may quote outside text (an API body, a path); one line.
        click.echo(f"trackssl-agent: {printable(redact(str(exc)))}", err=True)
        sys.exit(report.error_exit_code(exc))
    except BrokenPipeError as exc:
        # The reader of stdout went away (``| head``): nothing left to say to anyone.
        sys.stderr.close()
        sys.exit(report.error_exit_code(exc))
    except Exception as exc:
        # A bug, not a condition the agent knows: one line here, the traceback at debug level.
        get_logger(__name__).debug("unexpected error", exc_info=True)
        click.echo(
            f"trackssl-agent: internal error: {type(exc).__name__}: {printable(redact(str(exc)))}; "
            "rerun with --log-level debug for the traceback and report it",
            err=True,
        )
        sys.exit(report.error_exit_code(exc))
    sys.exit(code if isinstance(code, int) else report.ExitCode.OK)
