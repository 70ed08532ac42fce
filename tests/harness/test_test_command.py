"""The test command (``scripts/test.sh``) is safe on a real host: it says what it installs
before installing anything, and its server set-up (``scripts/install-servers.sh``) leaves
every process it did not start alone, a production slapd or prosody included."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileges import need_root

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "install-servers.sh"


def _state(pid: int) -> str:
    """The one-letter state of ``pid`` (R, S, T for stopped, Z, ...); "" once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


def _installed(package: str) -> bool:
    """Whether dpkg has ``package`` installed."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", package],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return done.stdout == "installed"


@pytest.fixture
def foreign_daemons(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Processes named slapd and prosody (copies of sleep) that the set-up did not start."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    procs = {}
    for name in ("slapd", "prosody"):
        copy = tmp_path / name
        shutil.copy(sleep, copy)
        procs[name] = subprocess.Popen([str(copy), "600"], start_new_session=True)
    yield procs
    for proc in procs.values():
        proc.kill()
        proc.wait()


def test_server_setup_leaves_a_running_slapd_alone(
    foreign_daemons: dict[str, subprocess.Popen[bytes]],
) -> None:
    """install-servers.sh, run as root while a slapd and a prosody it did not start are
    running: both run on afterwards, same pids, neither stopped nor killed."""
    need_root("the server set-up installs Debian packages")
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian host: the server set-up is for Debian and Ubuntu")
    packages = subprocess.run(
        ["bash", str(SETUP), "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    missing = [package for package in packages if not _installed(package)]
    if missing:  # apt-get would then reach the network; tests contact loopback only
        message = f"run scripts/install-servers.sh first; missing: {' '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every Debian package the tests need is installed" in done.stdout
    for name, proc in foreign_daemons.items():
        assert proc.poll() is None, f"{name} (pid {proc.pid}) was ended"
        assert _state(proc.pid) in {"S", "R"}, f"{name} is in state {_state(proc.pid)!r}"
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == name


def test_test_command_says_what_it_installs_before_installing(tmp_path: Path) -> None:
    """``scripts/test.sh --plan`` prints one line naming the Debian packages (as root) and
    every requirement pip installs, and installs nothing (no venv appears)."""
    for relative in ("scripts/test.sh", "scripts/install-servers.sh", "pyproject.toml"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    done = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "test.sh"), "--plan"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for requirement in [*project["dependencies"], *extras["test"], *extras["build"]]:
        assert f" {requirement}" in line, requirement
    if os.geteuid() == 0 and shutil.which("apt-get"):
        assert "apt-get" in line
        assert " slapd " in line
        assert " postgresql " in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml", "scripts"]
