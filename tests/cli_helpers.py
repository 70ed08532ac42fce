"""Running the console entry point in-process, as a user would, for CLI tests."""

from __future__ import annotations

import pytest

from trackssl_agent.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``trackssl-agent ARGS`` in-process; return (exit code, stdout, stderr)."""
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err
