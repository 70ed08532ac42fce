"""``trackssl-agent --version --verbose``: the version line, then the Python, the OpenSSL that
the ``ssl`` module uses, the platform and the build form; without a configuration and
without click, so a release check can ask a frozen build which OpenSSL it carries. The CLI
runs as a subprocess of this interpreter.
"""

from __future__ import annotations

import os
import platform
import ssl
import subprocess
import sys
from pathlib import Path

import pytest


def agent(*args: str, cwd: Path, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m trackssl_agent ARGS`` in ``cwd`` without any TRACKSSL_ variable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRACKSSL_")}
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "trackssl_agent"]
    return subprocess.run(
        [*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("flags", [("--version", "--verbose"), ("--verbose", "--version"),
                                   ("--version", "-v")])  # fmt: skip
def test_verbose_version_names_python_openssl_platform_and_build(
    tmp_path: Path, flags: tuple[str, str]
) -> None:
    """Each line is ``name value``: the OpenSSL is the one this interpreter's ssl module
    uses, the Python and platform this interpreter's, the build a Python package."""
    result = agent(*flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("trackssl-agent ")
    assert lines[0] == agent("--version", cwd=tmp_path).stdout.strip()
    fields = dict(line.split(" ", 1) for line in lines[1:])
    assert list(fields) == ["python", "openssl", "platform", "build"]
    assert fields["python"] == f"{platform.python_version()} ({platform.python_implementation()})"
    assert fields["openssl"] == ssl.OPENSSL_VERSION
    assert fields["platform"] == f"{platform.platform()} ({platform.machine()})"
    assert fields["build"] == f"Python package in {sys.prefix}"
    assert result.stderr == ""


def test_verbose_version_needs_no_configuration_and_no_click(tmp_path: Path) -> None:
    """A broken environment.txt in the working directory changes nothing, and click is never
    imported (start-up time, and no command's machinery)."""
    (tmp_path / "environment.txt").write_text("TRACKSSL_INTERVAL=every now and then\n")
    result = agent("--version", "--verbose", cwd=tmp_path, importtime=True)
    assert result.returncode == 0, result.stderr
    assert "openssl OpenSSL" in result.stdout or "openssl LibreSSL" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "click" not in imported
    assert not {name for name in imported if name.startswith("trackssl_agent.")} - {
        "trackssl_agent.cli", "trackssl_agent.cli.table", "trackssl_agent.errors",
        "trackssl_agent.__main__",
    }  # fmt: skip


def test_other_arguments_beside_version_stay_usage_errors(tmp_path: Path) -> None:
    """Only --verbose/-v join --version; anything else is still click's usage error (3)."""
    result = agent("--version", "--json", cwd=tmp_path)
    assert result.returncode == 3
    assert "openssl" not in result.stdout
