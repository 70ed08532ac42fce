"""Running the console entry point in-process, as a user would, for CLI tests; the
environment an agent process gets from a test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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


FOREIGN_PREFIXES = ("TRACKSSL_", "_TRACKSSL", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
"""Variables of the runner that would steer an agent: its settings, the test hook, CA bundles."""


def foreign(name: str) -> bool:
    """Whether the runner's variable ``name`` must not reach a test's agent: a setting, a CA
    bundle, or a proxy (urllib reads any ``*_proxy`` in any case; a runner's proxy would
    carry the agent's requests to the loopback API away)."""
    return name.upper().startswith(FOREIGN_PREFIXES) or name.lower().endswith("_proxy")


def agent_environ(**extra: str) -> dict[str, str]:
    """The environment for an agent subprocess: this process's, minus every ``foreign``
    variable, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not foreign(name)}
    env.update(extra)
    return env


def console_script(name: str = "trackssl-agent") -> Path:
    """The installed entry point ``name`` beside the interpreter running the tests (the
    venv's bin or Scripts folder), wherever that venv lives."""
    folder = Path(sys.executable).parent
    for candidate in (folder / name, folder / f"{name}.exe"):
        if candidate.is_file():
            return candidate
    pytest.fail(f"{name} is not installed beside {sys.executable}: pip install -e .")
