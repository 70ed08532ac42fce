"""``discover NETWORK...``: find the TLS endpoints a network holds, as a targets file."""

from __future__ import annotations

import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from trackssl_agent.cli.options import config_option, family_option, output_option, setting_option
from trackssl_agent.cli.progress import ProgressLine
from trackssl_agent.config import config, settings
from trackssl_agent.discover.plan import default_ports, make_resolver, parse_ports, plan
from trackssl_agent.discover.scan import (
    DEFAULT_RATE,
    json_entry,
    render_json,
    render_targets,
    scan,
    targets_line,
)
from trackssl_agent.engine.probe import ProbeSettings, address_family
from trackssl_agent.errors import ExitCode
from trackssl_agent.render import output_file

_DEFAULT_PORTS = ",".join(str(port) for port in default_ports())


@click.command()
@click.argument("networks", nargs=-1, required=True, metavar="NETWORK...")
@click.option(
    "--ports",
    "ports_text",
    metavar="LIST",
    default=_DEFAULT_PORTS,
    help="Ports to try: a comma list and ranges, e.g. 443,636,8000-8443 [default: "
    f"{_DEFAULT_PORTS.replace(',', ', ')}: the well-known port of each protocol the agent "
    "speaks, and 8443].",
)
@setting_option("timeout")
@setting_option("concurrency")
@click.option(
    "--rate",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_RATE,
    show_default=True,
    help="New connection attempts per second, at most.",
)
@family_option
@click.option("--json", "as_json", is_flag=True, help="Print the probe JSON of what was found.")
@output_option
@click.option(
    "--max-pairs",
    type=click.IntRange(1),
    metavar="N",
    help="Allow up to N address x port pairs [default: 65,536 addresses, 1,048,576 pairs].",
)
@config_option
def discover(
    networks: tuple[str, ...],
    ports_text: str,
    timeout: float | None,
    concurrency: int | None,
    rate: int,
    ipv4: bool,
    ipv6: bool,
    as_json: bool,
    output_path: Path | None,
    max_pairs: int | None,
    config_path: Path | None,
) -> int:
    """Find the TLS endpoints of NETWORK... and print them as a targets file for check-once.

    NETWORK is a CIDR (10.1.0.0/24, fd00::/120), one address, or a host name (all its
    addresses). Each address x port gets a TCP connect, then where it connects the
    STARTTLS dialogue the port table picks (direct TLS elsewhere) and a ClientHello;
    nothing else is sent. Endpoints that present a certificate are printed one a line,
    sorted, each with its subject and expiry as a comment. TRACKSSL_ALLOW applies: other
    addresses are not contacted. The network and broadcast addresses of IPv4 networks
    larger than /31 are skipped. Exit 0 once the scan completed, 3 for usage errors.
    """
    cfg = config.from_process(
        config_option=config_path,
        options={settings.TIMEOUT: timeout, settings.CONCURRENCY: concurrency},
    )
    family = address_family(ipv4=ipv4, ipv6=ipv6)
    if output_path is not None:  # refused before the scan, not after it
        output_file.check_writable(output_path)
    config.start_logging(cfg)
    scan_plan = plan(
        networks, parse_ports(ports_text), family=family, allow=cfg.allow, max_pairs=max_pairs,
        resolver=make_resolver(timeout=cfg.timeout),
    )  # fmt: skip
    # The plan already holds addresses only (of the chosen family, inside TRACKSSL_ALLOW).
    probe_settings = ProbeSettings(timeout=cfg.timeout, family=socket.AF_UNSPEC)
    progress = ProgressLine(lambda c: f"{c[0]:,}/{c[1]:,}") if sys.stderr.isatty() else None
    render = json_entry(datetime.now(UTC)) if as_json else targets_line
    try:
        found = scan(
            scan_plan, probe_settings, concurrency=cfg.concurrency, rate=rate, render=render,
            progress=progress,
        )  # fmt: skip
    finally:
        if progress is not None:
            progress.end()
    text = render_json(found.found) if as_json else render_targets(found.found)
    click.echo(found.summary(), err=True)
    if output_path is None:
        click.echo(text, nl=False)
    else:
        output_file.write_atomic(output_path, text.encode("utf-8"))
    return ExitCode.OK  # the scan completed, whatever it found
