"""The single file under the systemd units on a hardened host. It unpacks itself into
``$TMPDIR`` at each start and maps its libraries from there: with ``/tmp`` mounted
``noexec`` (CIS-hardened RHEL; ``PrivateTmp=`` keeps the flag) it cannot start, and in the
environment the units give it (``TMPDIR`` in their ``CacheDirectory=``) it runs even with
``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run`` (Debian, Ubuntu) all ``noexec``.

Each case runs in a private mount namespace (``unshare --mount``, as root), so the
``noexec`` mounts exist for that one process only; where that is not allowed (an
unprivileged container, a non-root user) the cases skip. The agent runs as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.frozen_builds import ROOT, ensure_built

pytestmark = pytest.mark.frozen

UNITS = ROOT / "build" / "linux"
SERVICES = ("trackssl-agent.service", "trackssl-agent-check.service",
            "trackssl-agent-textfile.service")  # fmt: skip
NOEXEC_ON_HARDENED_HOSTS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
"""Mounted noexec by CIS benchmarks (the first three) and by Debian's and Ubuntu's
initramfs (/run, and so everything systemd's RuntimeDirectory= makes)."""

# Run inside the namespace: an executable tmpfs over /var/cache (hiding the host's for this
# process only) holding a copy of the executable and the folder CacheDirectory= would make,
# then every noexec mount of a hardened host; finally the executable with the unit's TMPDIR.
HARDENED_HOST = """
set -e
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /var/cache
cp "$1" /var/cache/agent-under-test
mkdir -m 0700 /var/cache/trackssl-agent
for dir in /tmp /var/tmp /dev/shm /run; do
    mount -t tmpfs -o nosuid,nodev,noexec,mode=1777 tmpfs "$dir"
done
mkdir -m 0700 /run/trackssl-agent
exec env -i PATH=/usr/bin:/bin TMPDIR="$2" /var/cache/agent-under-test --version --verbose
"""


@pytest.fixture(scope="module")
def single_file() -> Path:
    """The single-file build: the first of $TRACKSSL_AGENT_BINARY, else dist/ (built now
    unless an up-to-date build exists)."""
    named = os.environ.get("TRACKSSL_AGENT_BINARY")
    if named:
        return Path(named.split(os.pathsep)[0]).resolve()
    return ensure_built()


@pytest.fixture(scope="module")
def namespaces() -> None:
    """Skip unless this process may make a private mount namespace and mount in it."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        pytest.skip("needs Linux and unshare")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o noexec tmpfs /mnt"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")


def on_hardened_host(single_file: Path, tmpdir: str) -> subprocess.CompletedProcess[str]:
    """``--version --verbose`` of the single file with ``TMPDIR=tmpdir`` on a host whose
    temporary folders and /run are all mounted noexec."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", HARDENED_HOST,
         "hardened-host", str(single_file), tmpdir],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def unit_environment(name: str) -> dict[str, str]:
    """The variables the unit's ``Environment=`` lines set."""
    env = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def test_single_file_cannot_start_from_a_noexec_tmp(namespaces: None, single_file: Path) -> None:
    """With TMPDIR on a noexec /tmp the single file cannot map the libraries it unpacked:
    the problem the units' TMPDIR solves."""
    result = on_hardened_host(single_file, "/tmp")
    assert result.returncode == 127, result
    assert "failed to map segment" in result.stderr


def test_runtime_directory_under_a_noexec_run_would_not_do(
    namespaces: None, single_file: Path
) -> None:
    """Under /run (RuntimeDirectory=), noexec on Debian and Ubuntu, it fails the same way."""
    result = on_hardened_host(single_file, "/run/trackssl-agent")
    assert result.returncode == 127, result
    assert "failed to map segment" in result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_single_file_runs_in_the_units_environment(
    namespaces: None, single_file: Path, name: str
) -> None:
    """Each service points TMPDIR into its CacheDirectory= (under /var/cache, outside every
    folder hardened hosts mount noexec), and there the single file starts and answers."""
    env = unit_environment(name)
    tmpdir = env.get("TMPDIR", "/tmp")
    assert not any(
        tmpdir == folder or tmpdir.startswith(f"{folder}/") for folder in NOEXEC_ON_HARDENED_HOSTS
    ), f"{name}: TMPDIR={tmpdir}"
    unit = (UNITS / name).read_text()
    assert f"CacheDirectory={tmpdir.removeprefix('/var/cache/')}\n" in unit, name
    result = on_hardened_host(single_file, tmpdir)
    assert result.returncode == 0, result
    assert result.stdout.startswith("trackssl-agent "), result.stdout
    assert "\nbuild single file\n" in result.stdout
