"""The click group: a table of commands whose modules are imported only when one runs.

``--help`` lists the commands from the table's summaries (``table``), so it imports none
of them.
"""

from __future__ import annotations

import importlib

import click

from trackssl_agent import __version__
from trackssl_agent.cli.table import COMMANDS, GROUP_HELP


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
    pass


cli.help = GROUP_HELP
