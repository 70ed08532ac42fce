"""The command line: click commands that build inputs, call the core, and render results.

This is the only module that imports click. Exit codes follow SPEC section 2; click's own
usage errors exit 3, not click's default 2.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from trackssl_agent import __version__, output, protocols
from trackssl_agent.errors import AgentError, UsageError
from trackssl_agent.log import setup_logging
from trackssl_agent.probe import ProbeSettings, probe_many
from trackssl_agent.report import ExitCode, Thresholds, probe_exit_code
from trackssl_agent.results import ProbeResult
from trackssl_agent.targets import Target, encode_hostname, parse_target

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = 10.0


def family_option(func: F) -> F:
    """``-4`` / ``-6``: restrict addresses to one family."""
    func = click.option("-6", "--ipv6", "ipv6", is_flag=True, help="Only IPv6 addresses.")(func)
    return click.option("-4", "--ipv4", "ipv4", is_flag=True, help="Only IPv4 addresses.")(func)


def probe_options(func: F) -> F:
    """Options shared by ``probe`` and ``check-once`` (SPEC section 2)."""
    for decorator in reversed(
        [
            click.option(
                "--timeout",
                type=click.FloatRange(min=0.1, max=600),
                default=None,
                help="One deadline per target: DNS, connect, STARTTLS, handshake [default: 10].",
            ),
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
        click.echo(f"trackssl-agent: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
