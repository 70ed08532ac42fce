"""The exit-code authority: every outcome (error, signal, cycle facts, probe results, a bad
command line) maps to its SPEC section 2 code in ``report``, and ``cli.main`` exits with it."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from trackssl_agent import errors
from trackssl_agent.render import report
from trackssl_agent.render.report import ExitCode


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.UsageError("bad target"), ExitCode.USAGE),
        (errors.ConfigError("bad file"), ExitCode.USAGE),
        (errors.StateDirError("unsafe dir"), ExitCode.USAGE),
        (errors.LockError("held"), ExitCode.USAGE),
        (errors.ApiError("down"), ExitCode.CRITICAL),
        (errors.AgentError("other"), ExitCode.CRITICAL),
        (BrokenPipeError(), ExitCode.CRITICAL),
        (RuntimeError("a bug"), ExitCode.CRITICAL),
    ],
)
def test_error_codes(error: BaseException, code: ExitCode) -> None:
    """Input errors exit 3; a failed cycle, a closed stdout and a bug exit 2."""
    assert report.error_exit_code(error) is code


def test_signal_codes_follow_the_shell_convention() -> None:
    """An immediate exit on signal N is 128 + N: 130 for SIGINT, 143 for SIGTERM."""
    assert report.signal_exit_code(signal.SIGINT) == 130
    assert report.signal_exit_code(signal.SIGTERM) == 143


@pytest.mark.parametrize(
    ("auth_failed", "waits", "code"),
    [
        (False, False, ExitCode.OK),
        (False, True, ExitCode.WARNING),
        (True, False, ExitCode.CRITICAL),
        (True, True, ExitCode.CRITICAL),
    ],
)
def test_cycle_codes(auth_failed: bool, waits: bool, code: ExitCode) -> None:
    """A cycle is CRITICAL when the tokens were refused, WARNING when a result waits."""
    assert report.cycle_exit_code(auth_failed=auth_failed, waits=waits) is code


def test_no_results_is_ok() -> None:
    """Probing nothing is OK: the worst status of an empty batch."""
    assert report.probe_exit_code([]) is ExitCode.OK


def test_cli_usage_error_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option is a usage error: exit 3 (not click's 2), with click's message."""
    code, _out, err = run_cli(["probe", "--no-such-option", "h:443"], capsys)
    assert code == ExitCode.USAGE
    assert "No such option" in err


def test_cli_config_error_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing --config file ends the command with exit 3 and one line naming it."""
    code, _out, err = run_cli(["config", "--config", str(tmp_path / "none.txt")], capsys)
    assert code == ExitCode.USAGE
    assert err == (
        f"trackssl-agent: --config {tmp_path / 'none.txt'}: no such file; "
        "name an existing environment.txt\n"
    )
