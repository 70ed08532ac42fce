"""The state-dir lock against any lock-file content and anything planted under its name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api_server import ApiServer
from trackssl_agent.errors import StateDirError
from trackssl_agent.state.lock import StateLock, parse_pid, pid_alive

ROOT = Path(__file__).resolve().parents[2]

HOSTILE = [
    b"99999999999999999999\n",  # OverflowError in os.kill before the fix
    b"9" * 400,
    b"garbage",
    b"",
    b"-1\n",  # os.kill(-1, 0) would ask about every process
    b"0\n",  # os.kill(0, 0) is the own process group
    b"\xc2\xb2",  # a superscript two: str.isdigit() is true, int() fails
    b"\xff\xfe\x00\x01",
    b"12 34",
    b" 4194305 \n",
]


@pytest.mark.parametrize("content", HOSTILE)
def test_lock_file_with_any_content_is_taken_over(tmp_path: Path, content: bytes) -> None:
    """Whatever a lock file holds, with no live holder it is taken and our pid written."""
    (tmp_path / "agent.lock").write_bytes(content)
    with StateLock(tmp_path) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())


def test_lock_holding_a_20_digit_number_is_taken_over(tmp_path: Path) -> None:
    """Regression: ``99999999999999999999`` in agent.lock was an OverflowError on every start."""
    (tmp_path / "agent.lock").write_text("99999999999999999999\n")
    with StateLock(tmp_path) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())


def test_parse_pid_takes_only_a_plausible_pid() -> None:
    """Only 1..2**31-1 in ASCII digits (blanks around allowed) is a pid."""
    assert parse_pid(b"12345\n") == 12345
    assert parse_pid(b" 7 ") == 7
    for content in HOSTILE[:-1]:
        assert parse_pid(content) is None, content
    assert parse_pid(str(2**31).encode()) is None


def test_pid_alive_never_raises() -> None:
    """Out-of-range pids are simply not alive; a dead child is not alive; we are."""
    assert not pid_alive(10**20)
    assert not pid_alive(-1)
    assert not pid_alive(0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    assert pid_alive(os.getpid())


def test_hard_link_as_lock_file_is_refused_and_untouched(tmp_path: Path) -> None:
    """A lock file with a second name (a hard link to a victim) is never truncated."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.link(victim, state / "agent.lock")
    with pytest.raises(StateDirError, match="hard links"):
        StateLock(state).acquire()
    assert victim.read_text() == "precious\n"


def test_fifo_as_lock_file_is_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO planted as agent.lock is refused at once (opening it must not block)."""
    os.mkfifo(tmp_path / "agent.lock")
    with pytest.raises(StateDirError, match="not a file"):
        StateLock(tmp_path).acquire()


def test_symlink_as_lock_file_is_refused(tmp_path: Path) -> None:
    """A symlink as agent.lock is refused, even a dangling one (no file made through it)."""
    target = tmp_path / "made-through-the-link"
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "agent.lock").symlink_to(target)
    with pytest.raises(StateDirError, match="symbolic link"):
        StateLock(state).acquire()
    assert not target.exists()


def _check_once(api: ApiServer, state: Path) -> subprocess.CompletedProcess[str]:
    """``trackssl-agent check-once`` as a process of its own on ``state``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKSSL_", "_TRACKSSL"))}
    env.update(api.env(), TRACKSSL_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "check-once", "--log-level", "debug"],
        env=env, cwd=state.parent, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_take_over_line_only_after_a_holder_died(api_server: ApiServer, tmp_path: Path) -> None:
    """Two clean check-once processes in a row: the second does not claim to take over a dead
    agent's lock (a clean exit empties the pid); after a SIGKILLed holder the next one does."""
    state = tmp_path / "state"
    first = _check_once(api_server, state)
    assert first.returncode == 0, first.stderr
    assert (state / "agent.lock").read_text() == ""  # released cleanly: no pid left
    second = _check_once(api_server, state)
    assert second.returncode == 0, second.stderr
    assert "took over" not in second.stderr

    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys,time; from pathlib import Path; "
            "from trackssl_agent.state.lock import StateLock;"
            "l=StateLock(Path(sys.argv[1])); l.acquire(); print('locked', flush=True);"
            "time.sleep(60)",
            str(state),
        ],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    third = _check_once(api_server, state)
    assert third.returncode == 0, third.stderr
    assert f"took over the lock left by pid {holder.pid}, which is gone" in third.stderr
