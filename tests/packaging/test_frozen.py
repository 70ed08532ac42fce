"""The frozen (PyInstaller) agent: version, probe, check-once with environment.txt beside the
executable, and a long ``run`` that outlives the deletion of its extraction folder.

The build happens once per session (``scripts/build-binary.sh``, docs/development.md's "Build from
source"), or not at all when ``dist/`` already holds a build newer than every source file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tls_servers
from tests.api_server import ApiServer, domain_entries
from tests.certs import Chain, make_cert, make_chain, new_key, pem
from tests.cli_helpers import agent_environ
from tests.frozen_builds import FOLDER, ensure_built
from tests.listeners import closed_port
from trackssl_agent import __version__
from trackssl_agent.engine.certificates import to_pem

pytestmark = pytest.mark.frozen


@pytest.fixture(scope="session")
def frozen() -> Path:
    """The single-file executable, built now unless an up-to-date build exists."""
    return ensure_built()


@pytest.fixture(scope="module")
def target_chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """The chain the loopback TLS target presents."""
    return make_chain(tmp_path_factory.mktemp("target"), cn="localhost", name="target")


@pytest.fixture
def target(target_chain: Chain) -> Iterator[tls_servers.TcpServer]:
    """A TLS server on 127.0.0.1 presenting ``target_chain``."""
    with tls_servers.running(
        tls_servers.tls_server(tls_servers.server_context(target_chain))
    ) as server:
        yield server


def agent_env(temp: Path, **extra: str) -> dict[str, str]:
    """The test's environment without agent settings or proxies; temp files under ``temp``."""
    # The single-file build unpacks into $TMPDIR (POSIX) or %TMP% (Windows).
    return agent_environ(TMPDIR=str(temp), TMP=str(temp), TEMP=str(temp), **extra)


def extraction_folders(temp: Path) -> list[Path]:
    """The ``_MEIxxxxxx`` folders the single-file build made under ``temp``."""
    return sorted(path for path in temp.iterdir() if path.name.startswith("_MEI"))


def children(pid: int) -> list[int]:
    """Linux: the processes whose parent is ``pid`` (the single file runs its program in one)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:  # the process ended while we looked
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def unmapped_libraries(folder: Path, pids: list[int]) -> set[str]:
    """Linux: shared objects under ``folder`` that none of ``pids`` has mapped into memory.

    A mapped file stays readable after it is deleted; one not mapped yet cannot be loaded
    any more once the folder is gone.
    """
    libraries = {str(path) for path in folder.rglob("*.so*") if path.is_file()}
    mapped = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6:
                mapped.add(parts[5].removesuffix(" (deleted)"))
    return libraries - mapped


def stop(proc: subprocess.Popen[bytes]) -> int:
    """Ask the agent to stop as a service manager would; kill it if it does not."""
    if proc.poll() is None:
        if sys.platform == "win32":
            proc.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def test_version_of_both_builds(frozen: Path, tmp_path: Path) -> None:
    """Single-file and folder builds print ``trackssl-agent X.Y.Z`` of the package."""
    for exe in (frozen, FOLDER):
        result = subprocess.run(
            [str(exe), "--version"], env=agent_env(tmp_path), capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"trackssl-agent {__version__}"


def test_single_file_cleans_its_extraction_folder(frozen: Path, tmp_path: Path) -> None:
    """A short command leaves no ``_MEI`` folder behind in the temp dir."""
    subprocess.run(
        [str(frozen), "--help"], env=agent_env(tmp_path), capture_output=True, timeout=60,
        check=True,
    )  # fmt: skip
    assert extraction_folders(tmp_path) == []


def test_probe_against_loopback_tls(
    frozen: Path, tmp_path: Path, target: tls_servers.TcpServer, target_chain: Chain
) -> None:
    """The frozen probe fetches the presented chain of a loopback TLS server as JSON."""
    result = subprocess.run(
        [str(frozen), "probe", target.endpoint, "--json", "--timeout", "10"],
        env=agent_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [probed] = json.loads(result.stdout)
    assert probed["ok"] is True
    assert probed["chain"] == [to_pem(der) for der in target_chain.ders]
    assert probed["tls_version"] in {"TLSv1.2", "TLSv1.3"}


def test_probe_judges_against_the_store_ssl_cert_file_names(
    frozen: Path, tmp_path: Path, target: tls_servers.TcpServer, target_chain: Chain
) -> None:
    """The single file judges with the host's store, not a bundled one: a system-style bundle
    named by SSL_CERT_FILE that holds the target's CA makes its chain verified; the same
    bundle without that CA leaves it untrusted, the missing root named."""
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    others = system.read_bytes() if system.is_file() else b""
    others += pem(make_cert(cn="Unrelated Root CA", key=new_key(), ca=True))
    with_ca, without = tmp_path / "with-ca.crt", tmp_path / "without.crt"
    with_ca.write_bytes(others + target_chain.ca_file.read_bytes())
    without.write_bytes(others)
    judged = {}
    for name, bundle in (("with", with_ca), ("without", without)):
        result = subprocess.run(
            [str(frozen), "probe", target.endpoint, "--json", "--verify"],
            env=agent_env(tmp_path, SSL_CERT_FILE=str(bundle)), capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        [judged[name]] = json.loads(result.stdout)
        judged[name]["exit"] = result.returncode
    assert (judged["with"]["exit"], judged["with"]["status"], judged["with"]["problems"]) == (
        0, "OK", [],
    )  # fmt: skip
    assert judged["without"]["exit"] == 1
    [untrusted] = judged["without"]["problems"]
    assert untrusted["kind"] == "untrusted"
    assert "'CN=target Test Root CA' is neither presented nor trusted" in untrusted["message"]


def test_check_once_reads_environment_txt_beside_the_executable(
    frozen: Path,
    tmp_path: Path,
    target: tls_servers.TcpServer,
    target_chain: Chain,
    api_chain: Chain,
) -> None:
    """check-once finds environment.txt beside the executable (cwd elsewhere) and reports."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / frozen.name
    shutil.copy2(frozen, exe)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    temp = tmp_path / "temp"
    temp.mkdir()
    with ApiServer(tls=api_chain) as api:
        api.domains = domain_entries({34027: target.port})
        settings = {
            **api.env(),
            "TRACKSSL_CA_BUNDLE": str(api_chain.ca_file),
            "TRACKSSL_STATE_DIR": str(tmp_path / "state"),
        }
        (bindir / "environment.txt").write_text(
            "".join(f"{key}={value}\n" for key, value in settings.items())
        )
        result = subprocess.run(
            [str(exe), "check-once"], cwd=workdir, env=agent_env(temp), capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [posted] = api.posted
    assert posted["domain_id"] == 34027
    assert posted["certificate"] == to_pem(target_chain.ders[0])
    assert posted["agent_version"] == __version__
    assert api.auth_token not in result.stdout + result.stderr


def test_run_survives_deletion_of_its_extraction_folder(
    frozen: Path,
    tmp_path: Path,
    target: tls_servers.TcpServer,
    target_chain: Chain,
    api_chain: Chain,
) -> None:
    """A single-file ``run`` whose ``_MEI`` folder a temp cleaner deleted completes its next
    cycle, which takes a new path (a new domain that refuses), and still stops cleanly."""
    temp = tmp_path / "temp"
    temp.mkdir()
    log = tmp_path / "agent.log"
    refused = closed_port()
    with ApiServer(tls=api_chain) as api:
        api.domains = domain_entries({7: target.port})
        # Linux: the OS trust store path (truststore honours SSL_CERT_FILE); elsewhere the
        # agent's own extra bundle, since the system store cannot be changed by a test.
        trust = (
            {"SSL_CERT_FILE": str(api_chain.ca_file)}
            if sys.platform.startswith("linux")
            else {"TRACKSSL_CA_BUNDLE": str(api_chain.ca_file)}
        )
        env = agent_env(temp, **api.env(), **trust, TRACKSSL_STATE_DIR=str(tmp_path / "state"))
        # Windows: a process group of its own, so that Ctrl-Break reaches only the agent.
        flags = 0
        if sys.platform == "win32":
            flags = subprocess.CREATE_NEW_PROCESS_GROUP
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(frozen), "run", "--interval", "1m"], cwd=tmp_path, env=env, stdout=out,
                stderr=subprocess.STDOUT, creationflags=flags,
            )  # fmt: skip
        try:
            assert api.wait_for(lambda: len(api.posted) >= 1, timeout=60), log.read_text()
            [folder] = extraction_folders(temp)
            if sys.platform.startswith("linux"):
                assert unmapped_libraries(folder, [proc.pid, *children(proc.pid)]) == set()
            # As a cleaner does it: Windows refuses to delete files in use, POSIX does not.
            shutil.rmtree(folder, ignore_errors=sys.platform == "win32")
            if sys.platform != "win32":
                assert not folder.exists()
            api.domains = domain_entries({7: target.port, 8: refused})
            # The next cycle comes one interval (1 minute, the minimum) plus jitter later.
            assert api.wait_for(lambda: len(api.posted) >= 3, timeout=120), log.read_text()
            assert proc.poll() is None, log.read_text()
        finally:
            code = stop(proc)
    second = {p["domain_id"]: p for p in api.posted[1:3]}
    assert second[7]["certificate"] == to_pem(target_chain.ders[0])
    assert second[7]["error"] == ""
    assert second[8]["certificate"] == ""
    assert second[8]["error"].startswith("refused"), second[8]["error"]
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert api.auth_token not in text


STOP_RUNS = 5
STOP_TIMEOUT = 3.0  # --timeout of the runs signalled below; the exit must come within +5 s


def run_and_signal_group(
    exe: Path, signum: int, api: ApiServer, workdir: Path
) -> tuple[int | None, float, str, list[dict[str, object]], list[Path]]:
    """Start ``run`` in a session (process group) of its own, wait for its first cycle,
    signal the whole group as a terminal's Ctrl-C or ``systemctl stop`` does; returns the
    exit code (None if it did not exit in time), the seconds the exit took, stderr, the
    JSON log and the ``_MEI`` folders left in its temp dir."""
    workdir.mkdir()
    temp = workdir / "temp"
    temp.mkdir()
    log = workdir / "agent.jsonl"
    errors = workdir / "stderr.txt"
    command = [str(exe), "run", "--interval", "1h", "--timeout", str(STOP_TIMEOUT)]
    command += ["--log-file", str(log), "--log-format", "json"]
    env = agent_env(temp, **api.env(), TRACKSSL_STATE_DIR=str(workdir / "state"))
    with errors.open("wb") as err:
        proc = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip

    def records() -> list[dict[str, object]]:
        if not log.exists():
            return []
        lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.endswith("\n")]

    code: int | None = None
    took = 0.0
    try:
        deadline = time.monotonic() + 60
        while not any(r.get("event") == "cycle" for r in records()):
            assert proc.poll() is None, errors.read_text()
            assert time.monotonic() < deadline, "no first cycle within 60 s"
            time.sleep(0.05)
        began = time.monotonic()
        os.killpg(proc.pid, signum)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return code, took, errors.read_text(errors="replace"), records(), extraction_folders(temp)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups (os.killpg)")
@pytest.mark.parametrize(
    "case",
    [(form, sig) for form in ("single-file", "folder") for sig in (signal.SIGINT, signal.SIGTERM)],
    ids=lambda case: f"{case[0]}-{signal.Signals(case[1]).name}",
)
def test_group_signal_stops_run_cleanly_every_time(
    frozen: Path,
    tmp_path: Path,
    case: tuple[str, int],
    target: tls_servers.TcpServer,
    api_server: ApiServer,
) -> None:
    """SIGINT/SIGTERM to the whole process group of a frozen ``run`` (the single file's
    bootloader passes its copy on to the agent, which got one too), 5 runs in a row: every
    run exits 0 within --timeout + 5 s after one stop, with no traceback, no "Aborted." and
    no exit-now, and the single file leaves no extraction folder."""
    form, signum = case
    exe = frozen if form == "single-file" else FOLDER
    api_server.domains = domain_entries({1: target.port})
    failures = []
    for run in range(STOP_RUNS):
        code, took, stderr, records, left = run_and_signal_group(
            exe, signum, api_server, tmp_path / f"run{run}"
        )
        events = [r.get("event") for r in records]
        ok = (
            code == 0
            and took < STOP_TIMEOUT + 5
            and "Traceback" not in stderr
            and "Aborted" not in stderr
            and events.count("stop") == 1
            and "exit_now" not in events
            and "stopped" in events
            and left == []
        )
        if not ok:
            failures.append(f"run {run}: exit {code} after {took:.1f}s, events {events}, "
                            f"left {left}, stderr {stderr[-2000:]!r}")  # fmt: skip
    assert failures == []
