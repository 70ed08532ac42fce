"""The command group: a table of lazily imported commands, and a ``--version`` without click."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tests.cli_helpers import agent_environ, run_cli
from trackssl_agent import __version__
from trackssl_agent.cli.group import cli
from trackssl_agent.cli.table import COMMANDS, VERSION_LINE, render_group_help


def _fresh_python(code: str, *, columns: int = 80) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet) on a terminal ``columns``
    wide; return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        env=agent_environ(COLUMNS=str(columns)),
    )  # fmt: skip
    return done.stdout


def test_version_fast_path_prints_what_click_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` prints the SPEC line, the same as click's own version option."""
    code, out, _err = run_cli(["--version"], capsys)
    by_click = CliRunner().invoke(cli, ["--version"])
    assert code == 0
    assert out == f"trackssl-agent {__version__}\n" == VERSION_LINE + "\n"
    assert by_click.output == out


def test_version_imports_neither_click_nor_the_engine() -> None:
    """``--version`` loads no click and no engine module (start-up time, issue 11)."""
    loaded = _fresh_python(
        "import sys\n"
        "from trackssl_agent.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(sorted(sys.modules)))"
    )
    version, modules = loaded.split("MODULES", 1)
    loaded_names = modules.split()
    assert version == VERSION_LINE + "\n"
    assert "click" not in loaded_names
    allowed = {"trackssl_agent.cli", "trackssl_agent.cli.table", "trackssl_agent.errors"}
    assert not [n for n in loaded_names if n.startswith("trackssl_agent.") and n not in allowed]


_HELP_CODE = (
    "import sys\n"
    "from trackssl_agent.cli import main\n"
    "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    "print('MODULES', ' '.join(sorted(sys.modules)))"
)


@pytest.mark.parametrize("columns", [80, 200])
def test_group_help_on_a_wide_terminal_imports_neither_click_nor_a_command(columns: int) -> None:
    """``--help`` at 80 columns or more is written from the table, without click."""
    loaded = _fresh_python(_HELP_CODE, columns=columns)
    modules = loaded.split("MODULES", 1)[1].split()
    assert "click" not in modules
    assert not {entry.module for entry in COMMANDS.values()} & set(modules)
    for name in COMMANDS:
        assert f"  {name}  " in loaded


def test_group_help_on_a_narrow_terminal_uses_click_and_no_command() -> None:
    """Below 80 columns click wraps the help, still without importing any command."""
    loaded = _fresh_python(_HELP_CODE, columns=60)
    modules = loaded.split("MODULES", 1)[1].split()
    assert "click" in modules
    assert not {entry.module for entry in COMMANDS.values()} & set(modules)
    assert "trackssl_agent.engine.probe" not in modules


@pytest.mark.parametrize("columns", [60, 79, 80, 120, 300])
def test_group_help_is_what_click_writes(columns: int) -> None:
    """The table's rendering of ``--help`` equals click's, whatever the terminal width
    (both in real processes: click's test runner forces its own width)."""
    ours = _fresh_python("from trackssl_agent.cli import main\nmain(['--help'])", columns=columns)
    by_click = _fresh_python(
        "from trackssl_agent.cli.group import cli\n"
        "cli.main(['--help'], prog_name='trackssl-agent')",
        columns=columns,
    )
    assert ours == by_click
    assert ours.startswith("Usage: trackssl-agent [OPTIONS] COMMAND [ARGS]...\n")
    assert (render_group_help(columns) is None) == (columns < 80)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_table_entry_loads_a_command_whose_doc_matches(name: str) -> None:
    """Every entry names a real click command whose docstring starts with the summary."""
    command = cli.get_command(click.Context(cli), name)
    assert isinstance(command, click.Command)
    assert command.help is not None
    first = " ".join(command.help.split("\n\n")[0].split())
    assert first == COMMANDS[name].summary


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A command not in the table is a usage error, exit 3."""
    code, _out, err = run_cli(["no-such-command"], capsys)
    assert code == 3
    assert "No such command 'no-such-command'" in err


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(COMMANDS))])
def test_help_is_self_contained(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """No --help sends the reader to a document they may not have: no SPEC section, no
    README table."""
    code, out, _err = run_cli([*command, "--help"], capsys)
    assert code == 0
    for words in ("SPEC", "README", "section "):
        assert words not in out, out
