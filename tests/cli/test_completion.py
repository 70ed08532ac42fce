"""Shell completion through click's own mechanism, against the installed entry point: the
scripts click generates for each shell, and a real bash completion request answering with
the command names (the group loads commands lazily) and a lazily loaded command's options."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import agent_environ, console_script
from trackssl_agent.cli.table import COMMANDS

VARIABLE = "_TRACKSSL_AGENT_COMPLETE"


def agent(instruction: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The installed ``trackssl-agent`` with the completion variable set."""
    env = agent_environ(**{VARIABLE: instruction, **extra})
    return subprocess.run(
        [str(console_script())], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def complete_bash(words: str, cword: int) -> list[str]:
    """What a bash completion request (as click's bash script sends it) answers."""
    done = agent("bash_complete", COMP_WORDS=words, COMP_CWORD=str(cword))
    assert done.returncode == 0, done.stderr
    return [row.split(",", 1)[1] for row in done.stdout.splitlines() if row.startswith("plain,")]


def test_bash_script_is_valid_bash_and_registers_the_command(tmp_path: Path) -> None:
    """``bash_source`` prints a script bash parses, registering ``trackssl-agent``."""
    bash = shutil.which("bash")
    assert bash is not None
    done = agent("bash_source")
    assert done.returncode == 0, done.stderr
    assert "complete -o nosort -F _trackssl_agent_completion trackssl-agent" in done.stdout
    script = tmp_path / "trackssl-agent.bash"
    script.write_text(done.stdout)
    subprocess.run([bash, "-n", str(script)], check=True, timeout=30)


def test_bash_completes_every_command_name() -> None:
    """An empty word after the program lists every command of the table."""
    assert complete_bash("trackssl-agent ", 1) == sorted(COMMANDS)
    assert complete_bash("trackssl-agent do", 1) == ["doctor"]


def test_bash_completes_the_options_of_a_lazily_loaded_command() -> None:
    """``doctor --`` lists doctor's options: the command module is loaded to answer."""
    options = complete_bash("trackssl-agent doctor --", 2)
    assert {"--config", "--json", "--targets-sample", "--probe"} <= set(options)
    assert "--dry-run" in complete_bash("trackssl-agent check-once --d", 2)


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("zsh", "#compdef trackssl-agent"),
        ("fish", "complete --no-files --command trackssl-agent"),
        ("powershell", "Register-ArgumentCompleter -Native -CommandName trackssl-agent"),
    ],
)
def test_other_shells_get_their_script(shell: str, marker: str) -> None:
    """zsh, fish and PowerShell (click 8.5+) scripts come from the same mechanism."""
    done = agent(f"{shell}_source")
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout
