"""The click group: a table of commands whose modules are imported only when one runs.

``--help`` lists the commands from the table's summaries, so it imports none of them.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import click

from trackssl_agent import __version__


class Entry(NamedTuple):
    """One command of the group: where it lives and its line in the group's help.

    A NamedTuple, not a dataclass: importing ``dataclasses`` costs ``--version`` 13 ms.
    """

    module: str
    attribute: str
    summary: str


COMMANDS: dict[str, Entry] = {
    "check-once": Entry(
        "trackssl_agent.cli.cycle_commands", "check_once",
        "Run exactly one cycle, then exit: for cron, CI and the Task Scheduler.",
    ),
    "config": Entry(
        "trackssl_agent.cli.cycle_commands", "show_config",
        "Show the effective configuration, where each value comes from; the token redacted.",
    ),
    "discover": Entry(
        "trackssl_agent.cli.discover_command", "discover",
        "Find the TLS endpoints of NETWORK... and print them as a targets file for check-once.",
    ),
    "doctor": Entry(
        "trackssl_agent.cli.doctor_command", "doctor_command",
        "Check configuration, tokens, API connection, clock, state dir and engine, one line each.",
    ),
    "probe": Entry(
        "trackssl_agent.cli.probe_command", "probe",
        "Probe TARGET... now and show what each presents; never talks to the cloud.",
    ),
    "run": Entry(
        "trackssl_agent.cli.cycle_commands", "run",
        "Run cycles until stopped: one at once, then one every --interval.",
    ),
}  # fmt: skip
"""The commands, by name. Adding a command is one entry here and its module."""


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry.module), entry.attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{entry.module}.{entry.attribute} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The summaries come from the table, so listing the commands imports none of them.
        rows = [(name, COMMANDS[name].summary) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, message=f"trackssl-agent {__version__}")
def cli() -> None:
    """Watch the TLS certificates of servers inside a private network for TrackSSL."""
