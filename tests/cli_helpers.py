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


CA_BUNDLES = ("SSL_CERT_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
SETTINGS = ("TRACKSSL_", "_TRACKSSL")
"""The agent's settings and its test hook."""


def steers_connections(name: str) -> bool:
    """Whether the runner's variable ``name`` redirects or re-trusts HTTP connections: a
    proxy (urllib reads any ``*_proxy``, in any case, lower case first) or a CA bundle. A
    runner's proxy would carry the requests to the loopback API away; no test wants one."""
    return name.lower().endswith("_proxy") or name.upper().startswith(CA_BUNDLES)


def foreign(name: str) -> bool:
    """Whether the runner's variable ``name`` must not reach a test's agent: one that
    ``steers_connections`` or one of the agent's own settings."""
    return steers_connections(name) or name.upper().startswith(SETTINGS)


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
