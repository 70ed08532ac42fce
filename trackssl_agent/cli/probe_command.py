"""``probe TARGET...``: an ad-hoc look at what servers present, no cloud involved."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import click

from trackssl_agent.cli.options import output_format, output_option, probe_options
from trackssl_agent.config import config, settings
from trackssl_agent.engine.allow import AllowList
from trackssl_agent.engine.probe import (
    ProbeSettings,
    address_family,
    literal_version,
    wrong_family,
)
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import Target, encode_hostname, parse_target
from trackssl_agent.errors import UsageError
from trackssl_agent.log import setup_logging
from trackssl_agent.render import output, output_file
from trackssl_agent.render.report import probe_exit_code

if TYPE_CHECKING:  # judging is imported when a judged command runs, never for the API path
    from trackssl_agent.verdict.judge import Policy
    from trackssl_agent.verdict.local_mode import Outcome


def format_results(results: Sequence[ProbeResult], *, fmt: str, now: datetime) -> str:
    """Results as readable text or SPEC section 4 JSON, not judged: the API path's
    (``check-once --dry-run``, ``--json``), where the cloud judges."""
    if fmt == "json":
        return json.dumps([output.result_json(r, now) for r in results], indent=2) + "\n"
    return "\n".join(output.render_text(r, now) for r in results)


def emit(text: str, output_path: Path | None) -> None:
    """Print ``text`` on stdout, or replace ``output_path`` with it atomically."""
    if output_path is None:
        click.echo(text, nl=False)
    else:
        output_file.write_atomic(output_path, text.encode("utf-8"))


def render_results(results: Sequence[ProbeResult], *, fmt: str, now: datetime) -> None:
    """Print results in ``fmt`` on stdout."""
    emit(format_results(results, fmt=fmt, now=now), None)


class Progress(Protocol):
    """A progress display: told after each result, ended before the output."""

    def __call__(self, done: int, total: int, failed: int) -> None:
        """After each result."""

    def end(self) -> None:
        """Before the output: finish the display."""


def judged_run(
    targets: Sequence[Target],
    probe_settings: ProbeSettings,
    *,
    concurrency: int,
    policy: Policy,
    ca_file: Path | None,
    fmt: str,
    output_path: Path | None,
    pem: bool = False,
    progress: Progress | None = None,
) -> int:
    """``probe`` and local mode: probe, judge (SPEC section 4a) and render; the exit code.

    Text on stdout is written as it becomes ready, each target once every target before it
    is done; other formats, ``--output`` and ``--pem`` are written whole at the end."""
    from trackssl_agent.render import judged_output  # noqa: PLC0415 - judging only
    from trackssl_agent.verdict import local_mode  # noqa: PLC0415 - judging only
    from trackssl_agent.verdict.judge import Judge, Judged  # noqa: PLC0415
    from trackssl_agent.verdict.trust_store import LazyAnchors, load_ca_file  # noqa: PLC0415

    extra = load_ca_file(ca_file) if ca_file is not None else []
    judge = Judge(policy, LazyAnchors(extra, extra_source=str(ca_file) if ca_file else None))
    stream = fmt == "text" and output_path is None and not pem
    shown = [0]
    objects: list[dict[str, Any]] = []

    def show(judged: Judged) -> None:
        now = datetime.now(UTC)
        click.echo(judged_output.text_block(judged, now, first=shown[0] == 0), nl=False)
        shown[0] += 1

    def keep(judged: Judged) -> None:
        # Made while the other targets are probed, not all at the end.
        objects.append(output.result_json(judged.result, datetime.now(UTC), judged.verdict))

    on_ready = show if stream else keep if fmt == "json" and not pem else None
    try:
        outcome = local_mode.judge_all(
            targets, probe_settings, concurrency=concurrency, judge=judge,
            on_ready=on_ready, progress=progress,
        )  # fmt: skip
    finally:  # a progress line's timer must not draw over what follows
        if progress is not None:
            progress.end()
    note = judge.store_note()
    if note:
        click.echo(f"trackssl-agent: note: {note}", err=True)
    if stream:
        click.echo(judged_output.summary_text(outcome), nl=False)
    elif pem:
        emit(_pem_text([j.result for j in outcome.judged]), output_path)
    elif fmt == "json":
        emit(json.dumps(objects, indent=2) + "\n", output_path)
    else:
        now = datetime.now(UTC)
        emit(judged_output.render(outcome, fmt=fmt, policy=policy, now=now), output_path)
    if outcome.interrupted and not stream:
        # The output is a document (JSON, OpenMetrics, Nagios, PEM) or a file: the summary
        # line goes to stderr.
        click.echo(outcome.tally().line(), err=True)
    return int(_exit_code(outcome))


def _exit_code(outcome: Outcome) -> int:
    return int(
        probe_exit_code((j.verdict for j in outcome.judged), interrupted=outcome.interrupted)
    )


@dataclass(frozen=True)
class ProbeEnvironment:
    """What ``probe`` takes from the process environment, its options winning: it reads
    no configuration file, and no setting beyond these four."""

    policy: Policy
    ca_file: Path | None
    """``--ca-file`` / ``TRACKSSL_CA_FILE``."""
    timeout: float
    """``--timeout`` / ``TRACKSSL_TIMEOUT``."""
    allow: AllowList | None
    """``TRACKSSL_ALLOW``: probe contacts nothing the agent may not."""


def probe_environment(
    *,
    warn_days: int,
    crit_days: int,
    verify: bool | None,
    ca_file: Path | None,
    timeout: float | None,
) -> ProbeEnvironment:
    """These options over the process environment (``TRACKSSL_VERIFY``,
    ``TRACKSSL_CA_FILE``, ``TRACKSSL_TIMEOUT``, ``TRACKSSL_ALLOW``); ConfigError (exit 3)
    for a bad value there."""
    from trackssl_agent.verdict.judge import Policy  # noqa: PLC0415 - judging only

    values = config.from_environment(
        ("verify", "ca_file", "timeout", "allow"),
        options={"verify": verify, "ca_file": ca_file, "timeout": timeout},
    )
    chosen = values["ca_file"]
    seconds = values["timeout"]
    allowed = values["allow"]
    return ProbeEnvironment(
        policy=Policy(warn_days=warn_days, crit_days=crit_days, verify=bool(values["verify"])),
        ca_file=chosen if isinstance(chosen, Path) else None,
        timeout=float(seconds) if isinstance(seconds, int | float) else settings.DEFAULT_TIMEOUT,
        allow=allowed if isinstance(allowed, AllowList) else None,
    )


def _pem_text(results: Sequence[ProbeResult]) -> str:
    """The chains retrieved, as PEM; each target that failed named on stderr."""
    for result in results:
        if not result.ok:
            click.echo(f"{result.target.text}: {result.error}", err=True)
    return "".join(output.render_pem(r) for r in results if r.ok)


@click.command()
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@probe_options
@output_option
@click.option("--servername", help="SNI to send [default: the host, none for an IP literal].")
@click.option("--pem", is_flag=True, help="Print the presented chain as PEM, leaf first.")
def probe(
    targets: tuple[str, ...],
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
    output_path: Path | None,
    servername: str | None,
    pem: bool,
) -> int:
    """Probe TARGET... now and show what each presents; never talks to the cloud.

    TARGET is host, host:port, [v6]:port, or scheme://host[:port] (https, ldaps, imaps,
    pop3s, smtps, tls, smtp, submission, lmtp, imap, pop3, ftp, ldap, xmpp, xmpp-server,
    nntp, sieve, postgres, mysql, rdp, mssql).

    Each target gets a status (OK, WARNING, CRITICAL) and its problems: expiry, and, judged
    offline against the OS trust store and --ca-file, trust, name and weak crypto (notes,
    or warnings with --verify). The exit code is the worst status.

    probe reads no configuration file. From the environment it applies TRACKSSL_TIMEOUT,
    TRACKSSL_ALLOW (a target outside it is not contacted), TRACKSSL_VERIFY and
    TRACKSSL_CA_FILE; an option given wins over its variable.
    """
    fmt = output_format(as_json=as_json, chosen=chosen_format)
    if pem and fmt != "text":
        given = "--json" if as_json else f"--format {fmt}"
        raise UsageError(f"--pem and {given} exclude each other")
    if output_path is not None:
        output_file.check_writable(output_path)
    environment = probe_environment(
        warn_days=warn_days, crit_days=crit_days, verify=verify, ca_file=ca_file, timeout=timeout
    )
    setup_logging(level="warning")
    family = address_family(ipv4=ipv4, ipv6=ipv6)
    parsed = [parse_target(text, starttls=starttls) for text in targets]
    for target in (t for t in parsed if t.is_ip):
        # The command line contradicts itself: a usage error, as discover says it.
        mismatch = wrong_family(family, target.host, literal_version(target))
        if mismatch is not None:
            raise UsageError(mismatch)
    sni = None
    if servername is not None:
        try:
            sni = encode_hostname(servername)
        except Exception as exc:
            raise UsageError(f"invalid --servername {servername!r}: {exc}") from None
        if not sni or sni.startswith("."):
            raise UsageError(f"invalid --servername {servername!r}: it must be a host name")
    probe_settings = ProbeSettings(
        timeout=environment.timeout, family=family, servername=sni, allow=environment.allow
    )
    return judged_run(
        parsed, probe_settings, concurrency=settings.DEFAULT_CONCURRENCY,
        policy=environment.policy, ca_file=environment.ca_file, fmt=fmt,
        output_path=output_path, pem=pem,
    )  # fmt: skip
