"""The log file against what another user plants: real agent processes run as root, and
``nobody`` (through setpriv) plants links, files and FIFOs in a sticky 1777 folder, at start
and between two cycles of ``run``. The victim file is never written; the agent refuses with
one line naming the path and the fix.

Running as ``nobody`` needs root: these tests skip without it, and fail under CI=true.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.api_server import ApiServer, domain_entries
from tests.as_nobody import NOBODY, ROOT
from tests.listeners import closed_port
from tests.privileges import need_root
from tests.shared_dirs import session_dir
from trackssl_agent import log
from trackssl_agent.agent.scheduler import TIME_SCALE_VAR
from trackssl_agent.base import log_file
from trackssl_agent.errors import LogFileError

AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
PRECIOUS = "precious\n"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A sticky 1777 folder like /tmp, reachable by ``nobody``."""
    need_root("another user (nobody) plants files in a sticky folder")
    base = Path(tempfile.mkdtemp(prefix="trackssl-logs-", dir=session_dir()))
    try:
        base.chmod(0o755)
        folder = base / "shared"
        folder.mkdir()
        folder.chmod(0o1777)
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of root's that no log line may reach."""
    path = tmp_path / "victim"
    path.write_text(PRECIOUS)
    return path


def as_nobody(*command: str) -> None:
    """Run ``command`` as ``nobody`` with no capability at all."""
    subprocess.run([*AS_NOBODY, *command], check=True, timeout=30)


def agent_env(api: ApiServer, state: Path, **extra: str) -> dict[str, str]:
    """The process environment minus any TRACKSSL_ setting, plus the fake API's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKSSL_", "_TRACKSSL"))}
    env.update(api.env(), TRACKSSL_STATE_DIR=str(state), PYTHONPATH=str(ROOT), **extra)
    return env


PLANTS = ("link", "file of nobody", "fifo")


def plant(kind: str, path: Path, victim: Path) -> None:
    """Have ``nobody`` put a link to ``victim``, a file of theirs or a FIFO at ``path``."""
    if kind == "link":
        as_nobody("ln", "-s", str(victim), str(path))
    elif kind == "fifo":
        as_nobody("mkfifo", str(path))
    else:
        as_nobody("sh", "-c", f"echo theirs > '{path}'")


@pytest.mark.parametrize("kind", PLANTS)
def test_a_planted_log_file_is_refused_at_start_exit_3(
    kind: str, shared: Path, victim: Path, api_server: ApiServer, tmp_path: Path
) -> None:
    """check-once as root with --log-file in a sticky folder where nobody planted the name
    (a link to root's file, a file of their own, a FIFO): exit 3 at once with one line
    naming the path and the fix; the victim is untouched and the API never contacted."""
    path = shared / "agent.log"
    plant(kind, path, victim)
    done = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "check-once", "--log-file", str(path)],
        env=agent_env(api_server, tmp_path / "state"), cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0]
    assert "remove it" in lines[0]
    assert "internal error" not in done.stderr
    assert victim.read_text() == PRECIOUS
    assert api_server.requests == []
    if kind == "file of nobody":
        assert path.read_text() == "theirs\n"


def test_a_log_link_planted_between_cycles_is_not_followed(
    shared: Path, victim: Path, api_server: ApiServer, tmp_path: Path
) -> None:
    """run as root, its log in a sticky folder: the file is moved away (as logrotate does)
    and nobody plants a link under its name; the next reopen refuses it with one line on
    stderr, the log goes on on stderr, the victim is never written and run keeps cycling."""
    api_server.domains = domain_entries({1: closed_port()})
    path = shared / "agent.log"
    stderr = tmp_path / "agent.stderr"
    env = agent_env(api_server, tmp_path / "state", **{TIME_SCALE_VAR: "30"})
    command = [sys.executable, "-m", "trackssl_agent", "run", "--interval", "1m",
               "--log-file", str(path), "--log-format", "json"]  # fmt: skip
    with stderr.open("wb") as err:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        wait_for(lambda: '"event": "cycle"' in read(path), proc)
        path.rename(shared / "agent.log.old")
        plant("link", path, victim)

        def refusals() -> list[str]:
            return [line for line in read(stderr).splitlines() if str(path) in line]

        wait_for(refusals, proc)
        # Two more cycle lines reach stderr: the agent goes on, with its log there.
        wait_for(lambda: len(events(read(stderr), "cycle")) >= 2, proc, timeout=30)
        assert proc.poll() is None
        (refusal,) = refusals()
        assert "symbolic link" in refusal
        assert "remove it" in refusal
        assert victim.read_text() == PRECIOUS
        assert "internal error" not in read(stderr)
        assert "Traceback" not in read(stderr)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert victim.read_text() == PRECIOUS
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_output_through_a_planted_link_replaces_the_link(
    shared: Path, victim: Path, api_server: ApiServer, tmp_path: Path
) -> None:
    """--output in a sticky folder where nobody planted ``out.json`` as a link to root's
    file: the output replaces the link (a rename, never a write through it); the victim
    keeps its content."""
    path = shared / "out.json"
    plant("link", path, victim)
    done = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "probe", "--json", "--timeout", "2",
         "--output", str(path), f"127.0.0.1:{closed_port()}"],
        env=agent_env(api_server, tmp_path / "state"), cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr  # the target refused: critical
    assert victim.read_text() == PRECIOUS
    assert not path.is_symlink()
    assert path.stat().st_uid == 0
    assert json.loads(path.read_text())


def test_a_link_planted_during_a_rotation_is_not_followed(
    shared: Path, victim: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nobody plants a link in the instant between a rotation's rename and its new open:
    the open refuses it, says so once on stderr, the records go on to stderr, and the
    victim is never written."""
    path = shared / "agent.log"
    logger = log.setup_logging(file=path)
    (handler,) = logger.handlers
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    handler.maxBytes = 300

    def rotate_then_plant(source: str, dest: str) -> None:
        Path(source).rename(dest)
        plant("link", path, victim)

    handler.rotator = rotate_then_plant
    for n in range(10):
        logger.info("line %d of the agent's log, long enough to fill 300 bytes soon", n)
    log.flush_logs()
    err = capsys.readouterr().err
    assert victim.read_text() == PRECIOUS
    refusals = [line for line in err.splitlines() if str(path) in line]
    assert len(refusals) == 1, err
    assert "symbolic link" in refusals[0]
    assert "line 9 of the agent's log" in err
    assert "line 0 of the agent's log" in (shared / "agent.log.1").read_text()


# -- in-process: what is still followed -------------------------------------------------


def test_an_admins_link_in_a_private_folder_is_followed(tmp_path: Path) -> None:
    """A link this user made in a folder only this user can write is an admin's choice of
    location: the log goes where it points."""
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    target = tmp_path / "elsewhere.log"
    (folder / "agent.log").symlink_to(target)
    logger = log.setup_logging(file=folder / "agent.log")
    logger.info("through the admin's link")
    log.flush_logs()
    assert "through the admin's link" in target.read_text()


def test_another_users_link_in_a_private_folder_is_refused(tmp_path: Path, victim: Path) -> None:
    """A link that belongs to another user is refused even where only this user can write
    (someone with the power to chown it put it there), the victim untouched."""
    need_root("another user (nobody) plants files in a sticky folder")
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    link = folder / "agent.log"
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(LogFileError, match="symbolic link made by"):
        log_file.open_log(link)
    assert victim.read_text() == PRECIOUS


def wait_for(
    predicate: Callable[[], object], proc: subprocess.Popen[bytes], timeout: float = 20
) -> None:
    """Poll ``predicate`` until true; fail if the process ends or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert predicate(), f"condition not met; rc={proc.poll()}"


def read(path: Path) -> str:
    """The file's text, or nothing when it is not there (yet)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return ""


def events(text: str, name: str) -> list[dict[str, object]]:
    """The JSON log records in ``text`` whose event is ``name``."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                found.append(record)
    return found
