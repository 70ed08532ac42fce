"""The agent as a real child process (``python -m trackssl_agent``), with a clean environment,
and optionally its peak resident memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import agent_environ

ROOT = Path(__file__).resolve().parent.parent

_MEASURED = """
import atexit, sys
peak_file = sys.argv.pop(1)

def record_peak():
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")))

atexit.register(record_peak)
from trackssl_agent.cli import main
main()
"""
"""Runs the CLI and, as it exits, writes its own ``VmHWM`` (peak RSS) to a file: the
process's own figure, unlike ``ru_maxrss``, which on Linux also counts the image the child
replaced at ``exec`` (the test process, with everything it imported)."""


def child_env(state: Path, **extra: str) -> dict[str, str]:
    """The runner's environment without any TRACKSSL_ or proxy variable, plus ``extra``."""
    return agent_environ(PYTHONPATH=str(ROOT), TRACKSSL_STATE_DIR=str(state), **extra)


def run_agent(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``trackssl-agent ARGS`` in a child process; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "trackssl_agent", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def run_agent_measured(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], int]:
    """``run_agent``, and the child's peak resident memory in KiB (Linux only)."""
    peak_file = cwd / "peak.txt"
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(peak_file), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    fields = peak_file.read_text().split()
    assert fields[0] == "VmHWM:" and fields[2] == "kB", fields
    return proc, int(fields[1])
