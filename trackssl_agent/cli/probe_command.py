"""``probe TARGET...``: an ad-hoc look at what servers present, no cloud involved."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click

from trackssl_agent import output, output_file, settings
from trackssl_agent.cli.options import output_format, output_option, probe_options
from trackssl_agent.errors import UsageError
from trackssl_agent.log import setup_logging
from trackssl_agent.probe import ProbeSettings, address_family
from trackssl_agent.probe_pool import probe_many
from trackssl_agent.report import Thresholds, probe_exit_code
from trackssl_agent.results import ProbeResult
from trackssl_agent.targets import Target, encode_hostname, parse_target


def run_probes(
    targets: Sequence[Target], settings: ProbeSettings, concurrency: int
) -> list[ProbeResult]:
    """Probe all targets concurrently; results in input order."""
    ordered: list[ProbeResult | None] = [None] * len(targets)
    for index, result in probe_many(targets, settings, concurrency=concurrency):
        ordered[index] = result
    return [r for r in ordered if r is not None]


def format_results(results: Sequence[ProbeResult], *, fmt: str, now: datetime) -> str:
    """Results as readable text, SPEC section 4 JSON or OpenMetrics (``fmt``, one of
    ``options.FORMATS``)."""
    if fmt == "json":
        return json.dumps([output.result_json(r, now) for r in results], indent=2) + "\n"
    if fmt == "openmetrics":
        from trackssl_agent import openmetrics  # noqa: PLC0415 - only for this format

        return openmetrics.render(results)
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
    starttls: str,
    output_path: Path | None,
    servername: str | None,
    pem: bool,
) -> int:
    """Probe TARGET... now and show what each presents; never talks to the cloud.

    TARGET is host, host:port, [v6]:port, or scheme://host[:port] (https, ldaps, imaps,
    pop3s, smtps, tls, smtp, submission, lmtp, imap, pop3, ftp, ldap, xmpp, xmpp-server,
    nntp, sieve, postgres, mysql, rdp, mssql).
    """
    fmt = output_format(as_json=as_json, chosen=chosen_format)
    if pem and fmt != "text":
        given = "--json" if as_json else f"--format {fmt}"
        raise UsageError(f"--pem and {given} exclude each other")
    if output_path is not None:
        output_file.check_writable(output_path)
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
    text = _pem_text(results) if pem else format_results(results, fmt=fmt, now=now)
    emit(text, output_path)
    return int(probe_exit_code(results, Thresholds(warn_days, crit_days), now))
