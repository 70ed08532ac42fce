"""``doctor``: check everything a cycle needs, one line each, before a ticket is opened."""

from __future__ import annotations

from pathlib import Path

import click

from trackssl_agent.cli.options import AsciiIntRange, config_option
from trackssl_agent.doctor import checkup


@click.command("doctor")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine output: an array of checks.")
@click.option(
    "--targets-sample",
    type=AsciiIntRange(0, 100),
    default=5,
    show_default=True,
    metavar="N",
    help="Look up the first N domains of the list (DNS and TRACKSSL_ALLOW only).",
)
@click.option("--probe", "send_probe", is_flag=True, help="Also probe the sampled targets.")
def doctor_command(
    config_path: Path | None, as_json: bool, targets_sample: int, send_probe: bool
) -> int:
    """Check configuration, tokens, API connection, clock, state dir and engine, one line each.

    Each line is ok, warn or FAIL with what was found, and the fix for a warn or FAIL. It
    contacts only the API (the sampled targets too with --probe) and ends within 30 s.
    Exit 0 when nothing failed, 2 when a check failed, 3 when the configuration cannot be
    read. The auth token is never shown, only its length.
    """
    diagnosis = checkup.diagnose(
        config_path=config_path, targets_sample=targets_sample, send_probe=send_probe
    )
    render = checkup.render_json if as_json else checkup.render_text
    click.echo(render(diagnosis.checks))
    return int(diagnosis.exit_code)
