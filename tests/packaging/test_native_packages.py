"""The Linux packages that scripts/build-packages.py builds around the single file, from the
one description in build/packages/: the .deb linted by lintian, then installed on this
machine with dpkg (the system user, files, modes, the conffile, ``trackssl-agent
--version``), upgraded with a changed configuration, removed and purged until nothing is
left; the .rpm read with ``rpm -qp`` (files, modes, config flags, scriptlets).

Installing changes this machine (a user, /usr/bin/trackssl-agent, units): it runs as root on
Debian/Ubuntu only, refuses to touch a machine where trackssl-agent is already installed,
and purges at the end even when a check fails. Under CI=true as root, missing tools fail
instead of skipping. The single file is the first of $TRACKSSL_AGENT_BINARY, else dist/'s
(built once per run, shared with the frozen tests). The agent runs as a subprocess.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.frozen_builds import ROOT, ensure_built

pytestmark = pytest.mark.frozen

NAME = "trackssl-agent"
USER = "trackssl-agent"
EXECUTABLE = "/usr/bin/trackssl-agent"
CONFIG_DIR = Path("/etc/trackssl-agent")
CONFIG = CONFIG_DIR / "environment.txt"
STATE_DIR = Path("/var/lib/trackssl-agent")
CACHE_DIR = Path("/var/cache/trackssl-agent")
SHARE_DIR = Path("/usr/share/trackssl-agent")
UNITS = ("trackssl-agent.service", "trackssl-agent-check.service", "trackssl-agent-check.timer",
         "trackssl-agent-textfile.service", "trackssl-agent-textfile.timer")  # fmt: skip
DEB_UNIT_DIR = Path("/lib/systemd/system")
RPM_UNIT_DIR = Path("/usr/lib/systemd/system")
ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")
LEFT_BEHIND: tuple[Path, ...] = (Path(EXECUTABLE), CONFIG_DIR, STATE_DIR, CACHE_DIR, SHARE_DIR,
                                 *(DEB_UNIT_DIR / unit for unit in UNITS))  # fmt: skip
"""Everything the package or its units create; none may exist after a purge."""


def under_ci() -> bool:
    """CI=true: a missing tool is a failure, not a skip."""
    return os.environ.get("CI") == "true"


def need(tool: str, package: str) -> str:
    """The path of ``tool``; without it, fail under CI and skip elsewhere."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install {package})"
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def single_file() -> Path:
    """The single-file build: the first of $TRACKSSL_AGENT_BINARY, else dist/'s."""
    named = os.environ.get("TRACKSSL_AGENT_BINARY")
    if named:
        return Path(named.split(os.pathsep)[0]).resolve()
    return ensure_built()


def build(single_file: Path, out: Path, package_format: str, *extra: str) -> Path:
    """One package, built by scripts/build-packages.py (as the release does)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-packages.py"), "--binary",
         str(single_file), "--out", str(out), "--format", package_format, *extra],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [path] = result.stdout.split()
    return Path(path)


@pytest.fixture(scope="module")
def deb(single_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb around the single file."""
    need("dpkg-deb", "dpkg")
    return build(single_file, tmp_path_factory.mktemp("deb"), "deb")


@pytest.fixture(scope="module")
def rpm(single_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .rpm around the single file."""
    need("rpmbuild", "rpm")
    return build(single_file, tmp_path_factory.mktemp("rpm"), "rpm")


def run(
    *argv: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv``, its output captured as text; the caller checks the exit code."""
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=cwd
    )


def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    """dpkg with ``args``, waiting while another dpkg or apt holds the lock."""
    deadline = time.monotonic() + 300
    while True:
        result = run("dpkg", *args, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        locked = "lock" in result.stderr and result.returncode != 0
        if not locked or time.monotonic() > deadline:
            return result
        time.sleep(2)


def installed() -> bool:
    """Whether dpkg knows the package as installed or with its configuration left."""
    status = run("dpkg-query", "-W", "-f=${Status}", NAME)
    return status.returncode == 0 and "not-installed" not in status.stdout


def account_lines() -> list[str]:
    """The lines of the account files that name the package's user or group."""
    return [
        f"{name}: {line.split(':')[0]}"
        for name in ACCOUNT_FILES
        if Path(name).exists()
        for line in Path(name).read_text().splitlines()
        if line.split(":")[0] == USER
    ]


@pytest.fixture
def machine() -> Iterator[None]:
    """This machine, for a dpkg install: root, Debian tools, no trackssl-agent yet; purged
    afterwards whatever happened."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("installs a .deb: needs root on Linux")
    if shutil.which("dpkg") is None and not under_ci():
        pytest.skip("not a Debian-based machine (no dpkg)")
    need("dpkg", "dpkg")
    present = [str(path) for path in LEFT_BEHIND if Path(path).exists()]
    if installed() or account_lines() or present:
        why = f"{NAME} is on this machine already ({present or 'package/user'}); purge it"
        if under_ci():  # CI's machine is its own: something earlier left this behind
            pytest.fail(why)
        pytest.skip(why)  # an operator's host: never purge their agent
    try:
        yield
    finally:
        if installed():
            dpkg("--purge", NAME)
        if account_lines():  # a purge that failed half-way: leave the machine as it was
            run("userdel", USER)
            run("groupdel", USER)
        for path in LEFT_BEHIND:
            if Path(path).is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif Path(path).exists():
                Path(path).unlink()


def mode_and_owner(path: Path | str) -> tuple[str, str, str]:
    """(octal mode, owner, group) of ``path``."""
    info = Path(path).stat()
    owner = pwd.getpwuid(info.st_uid).pw_name
    group = run("getent", "group", str(info.st_gid)).stdout.split(":")[0]
    return f"{stat.S_IMODE(info.st_mode):04o}", owner, group


def as_service_user(*argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` as the package's user, with the units' TMPDIR, from /."""
    return run(
        "runuser", "-u", USER, "--", "env", "-i", "PATH=/usr/bin:/bin", f"TMPDIR={CACHE_DIR}",
        f"TRACKSSL_STATE_DIR={STATE_DIR}", *argv, cwd="/",
    )  # fmt: skip


def test_deb_has_no_lintian_error(deb: Path) -> None:
    """lintian, Debian's own checker, finds no error in the .deb (warnings are reported)."""
    lintian = need("lintian", "lintian")
    result = run(lintian, "--fail-on", "error", str(deb))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"^E: ", result.stdout, re.MULTILINE), result.stdout


def test_deb_installs_runs_upgrades_and_purges_cleanly(
    machine: None, deb: Path, single_file: Path, tmp_path: Path
) -> None:
    """dpkg -i makes the system user, installs the executable, the units (not enabled) and
    the configuration with its modes; the executable runs, also as that user reading the
    file; an upgrade keeps a changed configuration; remove keeps configuration, state and
    user; purge leaves nothing."""
    result = dpkg("-i", str(deb))
    assert result.returncode == 0, result.stdout + result.stderr

    account = pwd.getpwnam(USER)
    assert account.pw_uid < 1000  # a system account
    assert (account.pw_dir, account.pw_shell) == (str(STATE_DIR), "/usr/sbin/nologin")
    assert run("getent", "group", USER).returncode == 0
    assert mode_and_owner(EXECUTABLE) == ("0755", "root", "root")
    for unit in UNITS:
        assert mode_and_owner(DEB_UNIT_DIR / unit) == ("0644", "root", "root"), unit
        text = (DEB_UNIT_DIR / unit).read_text()
        if unit.endswith(".service"):
            assert f"ExecStart={EXECUTABLE} " in text, unit
        assert "/usr/local/bin" not in text, unit
    assert not list(Path("/etc/systemd/system").rglob("trackssl-agent*"))  # nothing enabled
    assert mode_and_owner(SHARE_DIR / "hardening-systemd245.conf") == ("0644", "root", "root")
    assert mode_and_owner(CONFIG_DIR) == ("0750", "root", USER)
    assert mode_and_owner(CONFIG) == ("0600", USER, USER)
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", NAME).stdout
    assert str(CONFIG) in conffiles

    version = run(EXECUTABLE, "--version", env={**os.environ, "TMPDIR": str(tmp_path)})
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(rf"{NAME} \S+\n", version.stdout), version.stdout
    # As the units run it: the service user, TMPDIR in the folder CacheDirectory= makes.
    CACHE_DIR.mkdir(mode=0o700)
    shutil.chown(CACHE_DIR, USER, USER)
    shown = as_service_user(EXECUTABLE, "config", "--config", str(CONFIG))
    assert shown.returncode == 0, shown.stderr
    assert f"[{CONFIG}, line" in shown.stdout  # the user reads the file
    assert "readable by other users" not in shown.stderr
    verbose = as_service_user(EXECUTABLE, "--version", "--verbose")
    assert "\nbuild single file\n" in verbose.stdout, verbose

    # An upgrade never overwrites the configuration the administrator wrote.
    with CONFIG.open("a") as config:
        config.write("TRACKSSL_INTERVAL=2h\n")
    written = CONFIG.read_text()
    newer = build(single_file, tmp_path / "newer", "deb", "--version", "99.0.0")
    result = dpkg("-i", str(newer))
    assert result.returncode == 0, result.stdout + result.stderr
    assert run("dpkg-query", "-W", "-f=${Version}", NAME).stdout == "99.0.0-1"
    assert CONFIG.read_text() == written
    assert mode_and_owner(CONFIG) == ("0600", USER, USER)

    # Remove: the program goes; configuration, state (undelivered results) and user stay.
    STATE_DIR.mkdir(mode=0o700)
    (STATE_DIR / "undelivered").write_text("results")
    result = dpkg("--remove", NAME)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not Path(EXECUTABLE).exists()
    assert not any((DEB_UNIT_DIR / unit).exists() for unit in UNITS)
    assert CONFIG.read_text() == written
    assert (STATE_DIR / "undelivered").exists()
    assert account_lines()

    # Purge: nothing of the package is left.
    result = dpkg("--purge", NAME)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not installed()
    assert [str(path) for path in LEFT_BEHIND if Path(path).exists()] == []
    assert account_lines() == []
    overrides = run("dpkg-statoverride", "--list").stdout
    assert str(CONFIG_DIR) not in overrides


def rpm_query(package: Path, *query: str) -> str:
    """``rpm -qp`` of the package file with ``query``."""
    result = run("rpm", "-qp", *query, str(package))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_rpm_files_modes_config_and_scripts(rpm: Path) -> None:
    """The .rpm holds the same files with the same modes and owners, the configuration as
    %config(noreplace), units running /usr/bin/trackssl-agent; its scriptlets create the
    user before the files land and stop and disable the units only when it is erased."""
    listing = rpm_query(rpm, "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} "
                        "%{FILEFLAGS:fflags} %{FILENAMES}\n]")  # fmt: skip
    files = {line.split()[-1]: line.split()[:-1] for line in listing.splitlines()}
    assert files[EXECUTABLE][:3] == ["-rwxr-xr-x", "root", "root"]
    assert files[str(CONFIG_DIR)][:3] == ["drwxr-x---", "root", USER]
    assert files[str(CONFIG)][:3] == ["-rw-------", USER, USER]
    assert files[str(CONFIG)][3] == "cn"  # config, noreplace: upgrades keep the file
    for unit in UNITS:
        assert files[str(RPM_UNIT_DIR / unit)][:3] == ["-rw-r--r--", "root", "root"], unit
    assert str(SHARE_DIR / "hardening-systemd245.conf") in files
    assert rpm_query(rpm, "--qf", "%{ARCH}") in ("x86_64", "aarch64")

    scripts = rpm_query(rpm, "--scripts")
    pre = scripts.split("preinstall scriptlet", 1)[1].split("scriptlet", 1)[0]
    assert f"useradd --system --user-group --home-dir {STATE_DIR}" in pre
    preun = scripts.split("preuninstall scriptlet", 1)[1].split("scriptlet", 1)[0]
    assert 'if [ "$1" -eq 0 ]; then' in preun  # erase, not upgrade
    assert "disable " + " ".join(UNITS) in preun
    postun = scripts.split("postuninstall scriptlet", 1)[1]
    assert 'if [ "$1" -ge 1 ]; then' in postun and "try-restart trackssl-agent.service" in postun
    assert "shadow-utils" in rpm_query(rpm, "--requires")


def test_deb_and_rpm_come_from_one_description(deb: Path, rpm: Path) -> None:
    """Apart from where each distribution wants units and license texts, the two packages
    install the same paths."""
    deb_paths = {
        line.split()[-1].removeprefix(".")
        for line in run("dpkg-deb", "-c", str(deb)).stdout.splitlines()
        if not line.startswith("d")
    }
    rpm_paths = set(rpm_query(rpm, "-l").split())
    rpm_dirs = {line.split()[-1] for line in rpm_query(rpm, "-l", "-v").splitlines()
                if line.startswith("d")}  # fmt: skip

    def common(paths: set[str]) -> set[str]:
        return {
            # /usr/lib/systemd/system first: it contains /lib/systemd/system.
            path.replace(str(RPM_UNIT_DIR), "UNITS").replace(str(DEB_UNIT_DIR), "UNITS")
            for path in paths
            if not path.startswith(("/usr/share/doc/", "/usr/share/licenses/",
                                    "/usr/share/lintian/"))
        }  # fmt: skip

    assert common(deb_paths) == common(rpm_paths - rpm_dirs)
    assert EXECUTABLE in deb_paths and str(CONFIG) in deb_paths
