"""``probe TARGET...``: an ad-hoc look at what servers present, no cloud involved."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import click

from trackssl_agent import output, settings
from trackssl_agent.cli.options import probe_options
from trackssl_agent.errors import UsageError
from trackssl_agent.log import setup_logging
from trackssl_agent.probe import ProbeSettings, address_family, probe_many
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


def render_results(results: Sequence[ProbeResult], *, as_json: bool, now: datetime) -> None:
    """Print results as SPEC section 4 JSON or as readable text."""
    if as_json:
        click.echo(json.dumps([output.result_json(r, now) for r in results], indent=2))
        return
    click.echo("\n".join(output.render_text(r, now) for r in results), nl=False)


@click.command()
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
