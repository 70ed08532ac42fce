"""The command group: a table of lazily imported commands, and a ``--version`` without click."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from trackssl_agent import __version__
from trackssl_agent.cli import VERSION_LINE
from trackssl_agent.cli.group import COMMANDS, cli

from .cli_helpers import run_cli


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet); return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
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
    assert not [name for name in loaded_names if name.startswith("trackssl_agent.") and
                name not in {"trackssl_agent.cli", "trackssl_agent.errors"}]  # fmt: skip


def test_group_help_imports_no_command_module() -> None:
    """``--help`` lists the commands from the table without importing any of them."""
    loaded = _fresh_python(
        "import sys\n"
        "from trackssl_agent.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(sorted(sys.modules)))"
    )
    modules = loaded.split("MODULES", 1)[1].split()
    assert "click" in modules
    assert not {entry.module for entry in COMMANDS.values()} & set(modules)
    assert "trackssl_agent.probe" not in modules
    for name in COMMANDS:
        assert f"  {name}  " in loaded


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
