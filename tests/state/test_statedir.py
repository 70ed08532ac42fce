"""The state dir against hostile and broken file systems: an unusable dir (a file in its
place, read-only, full, not writable by this user) still lets the cycle probe and post,
exit 1, with one line naming the path and the fix; a dir someone else could plant files in
is refused (exit 3) and nothing planted there is followed; modes hold whatever the umask.

Mounts (tmpfs, read-only remounts), ``chown`` and running as ``nobody`` need root: these
tests skip without it, and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_server import AUTH_TOKEN, ApiServer, domain_entries
from tests.as_nobody import NOBODY, NobodyPython
from tests.cli_helpers import agent_environ, run_cli
from tests.privileges import need_root
from tests.shared_dirs import shared_dir
from tests.tls_servers import TcpServer
from trackssl_agent.errors import StateDirError
from trackssl_agent.state.lock import StateLock
from trackssl_agent.state.outbox import Outbox, Record
from trackssl_agent.state.statedir import open_folder


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` (a real ENOSPC when full)."""
    need_root("mounts a tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api_server: ApiServer) -> Path:
    """A clean environment pointed at the fake API; TRACKSSL_STATE_DIR set per test."""
    for name in list(os.environ):
        if name.startswith("TRACKSSL_"):
            monkeypatch.delenv(name)
    for key, value in api_server.env().items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def check_once(
    state: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """check-once in-process with ``state`` as the state dir."""
    monkeypatch.setenv("TRACKSSL_STATE_DIR", str(state))
    return run_cli(["check-once", "--timeout", "5"], capsys)


def one_line_about(err: str, path: Path, *words: str) -> str:
    """The single stderr line that names ``path`` and every word; fails if not exactly one."""
    lines = [line for line in err.splitlines() if str(path) in line and "cannot be used" in line]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_degraded(code: int, out: str, err: str, api: ApiServer, path: Path, *words: str) -> None:
    """Every result posted, exit 1, one line with the path and the fix, no internal error."""
    assert code == 1, out + err
    assert sorted(api.posted_ids()) == [1, 2]
    assert "internal error" not in out + err
    one_line_about(err, path, "TRACKSSL_STATE_DIR", *words)
    assert "delivered 2" in out


# -- part 2: an unusable state dir does not stop monitoring ------------------------------


def test_regular_file_in_place_of_the_state_dir_posts_directly_exit_1(
    env: Path,
    api_server: ApiServer,
    good: list[TcpServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A regular file where the state dir should be: probed, posted, exit 1, one line."""
    state = env / "state"
    state.write_text("not a dir")
    api_server.domains = domain_entries({1: good[0].port, 2: good[1].port})
    code, out, err = check_once(state, monkeypatch, capsys)
    assert_degraded(code, out, err, api_server, state, "not a directory", "without the lock")
    assert state.read_text() == "not a dir"


def test_read_only_file_system_posts_directly_exit_1(
    env: Path,
    api_server: ApiServer,
    good: list[TcpServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A state dir on a read-only mount (never written before): posted, exit 1, one line."""
    with tmpfs(env / "mnt") as mnt:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        api_server.domains = domain_entries({1: good[0].port, 2: good[1].port})
        code, out, err = check_once(mnt / "state", monkeypatch, capsys)
        assert_degraded(code, out, err, api_server, mnt / "state", "read-only")


def test_read_only_remount_keeps_the_backlog_and_the_lock(
    env: Path,
    api_server: ApiServer,
    good: list[TcpServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A used state dir remounted read-only: its backlog is still sent first, the lock is
    still taken (flock needs no write), the new results go direct, exit 1."""
    with tmpfs(env / "mnt", size="1m") as mnt:
        state = mnt / "state"
        box = Outbox.open(state / "outbox")
        box.add([Record(9, {"domain": {"domain_id": 9, "tag": "old"}})])
        box.close()
        with StateLock(state):
            pass  # the lock file exists now
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        api_server.domains = domain_entries({1: good[0].port, 2: good[1].port})
        code, out, err = check_once(state, monkeypatch, capsys)
        assert code == 1, out + err
        assert api_server.posted_ids()[0] == 9
        assert sorted(api_server.posted_ids()) == [1, 2, 9]
        line = one_line_about(err, state / "outbox", "read-only")
        assert "without the lock" not in line
        assert "internal error" not in out + err


def test_full_disk_mid_cycle_posts_everything_exit_1(
    env: Path,
    api_server: ApiServer,
    good: list[TcpServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ENOSPC on a real full tmpfs: every result still posted, exit 1, one line."""
    with tmpfs(env / "mnt", size="64k") as mnt:
        state = mnt / "state"
        state.mkdir(mode=0o700)
        filler = mnt / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as handle:
            while True:
                handle.write(b"x" * 4096)
                handle.flush()
        api_server.domains = domain_entries({1: good[0].port, 2: good[1].port})
        code, out, err = check_once(state, monkeypatch, capsys)
        assert_degraded(code, out, err, api_server, state / "outbox", "no space")


def test_outbox_write_failing_after_some_records_keeps_them_in_memory(tmp_path: Path) -> None:
    """A write failing with ENOSPC after earlier writes worked: nothing raises, the batch
    stays pending in memory (so it can be posted), ``problem`` names the path once, and
    the earlier durable segment is left intact."""
    with tmpfs(tmp_path / "mnt", size="64k") as mnt:
        box = Outbox.open(mnt / "outbox")
        first = [Record(1, {"domain": {"pad": "a" * 100}})]
        box.add(first)
        big = [Record(n, {"domain": {"pad": "b" * 4000}}) for n in range(2, 40)]
        box.add(big)  # 150 KB does not fit in 64 KB
        assert box.problem is not None
        assert str(mnt / "outbox") in box.problem
        assert "no space" in box.problem
        assert len(box) == 39
        assert all(box.is_current(r) for r in big)
        for record in big[:10]:
            box.done(record)
        box.commit()
        box.close()
        assert box.unsaved() == 28
        again = Outbox.open(mnt / "outbox")
        assert [r.domain_id for r in again.pending()] == [1]


@pytest.fixture(scope="module")
def nobody() -> NobodyPython:
    """The agent's code runnable as nobody, wherever the clone and its venv are."""
    need_root("runs the agent as nobody")
    return NobodyPython.prepare()


def test_root_owned_read_only_dir_as_another_user_posts_directly_exit_1(
    api_server: ApiServer, good: list[TcpServer], nobody: NobodyPython
) -> None:
    """Run as ``nobody`` with a root-owned 0555 state dir (allowed owner, not writable):
    the real process probes, posts, exits 1 with one line naming the path and that nobody
    may not write there."""
    base = shared_dir("nobody-state")
    state = base / "state"
    state.mkdir()
    state.chmod(0o555)
    api_server.domains = domain_entries({1: good[0].port, 2: good[1].port})
    env = agent_environ(**api_server.env(), TRACKSSL_STATE_DIR=str(state))
    done = subprocess.run(
        nobody.agent("check-once", "--timeout", "5"),
        env=env, cwd=base, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert_degraded(
        done.returncode, done.stdout, done.stderr, api_server, state,
        f"permission denied to nobody (uid {NOBODY})",
    )  # fmt: skip
    assert list(state.iterdir()) == []
    assert AUTH_TOKEN not in done.stdout + done.stderr


MODES_AS_NOBODY = """
import json, os, sys
from pathlib import Path
from trackssl_agent.state.lock import StateLock
from trackssl_agent.state.outbox import Outbox, Record
state = Path(sys.argv[1])
os.umask(0o777)
with StateLock(state):
    box = Outbox.open(state / "outbox")
    box.add([Record(1, {"domain": {}})])
    box.close()
print(json.dumps([r.domain_id for r in Outbox.open(state / "outbox").pending()]))
"""


def test_modes_hold_under_umask_0777_for_an_unprivileged_user(nobody: NobodyPython) -> None:
    """As nobody (no capability to override modes) under umask 0777: the state dir (and a
    missing parent), the outbox, the lock and the segments are made (0700/0600 for the
    agent's own) and read back, no PermissionError."""
    base = shared_dir("nobody-umask")
    os.chown(base, NOBODY, NOBODY)
    state = base / "parent" / "state"
    done = subprocess.run(
        nobody.code(MODES_AS_NOBODY, str(state)),
        env=agent_environ(), cwd=base, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [1]
    assert state.stat().st_uid == NOBODY
    assert state.parent.stat().st_mode & 0o700 == 0o700
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "outbox").stat().st_mode & 0o777 == 0o700
    assert (state / "agent.lock").stat().st_mode & 0o777 == 0o600
    (segment,) = (state / "outbox").glob("seg-*.json")
    assert segment.stat().st_mode & 0o777 == 0o600


# -- part 3: nothing follows what someone else planted ------------------------------------


def test_group_writable_state_dir_is_refused_exit_3(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A state dir writable by group or others: exit 3 before anything is contacted, one
    line naming the path and the fix."""
    state = env / "state"
    state.mkdir()
    state.chmod(0o770)
    code, _, err = check_once(state, monkeypatch, capsys)
    assert code == 3
    assert f"chmod go-w {state}" in err
    assert len(err.strip().splitlines()) == 1
    assert api_server.requests == []


def test_state_dir_of_another_user_is_refused_exit_3(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A state dir owned by another (non-root) user is refused, exit 3, before any contact."""
    need_root("chowns a dir to another user")
    state = env / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    code, _, err = check_once(state, monkeypatch, capsys)
    assert code == 3
    assert str(state) in err
    assert "uid 65534" in err
    assert "TRACKSSL_STATE_DIR" in err
    assert api_server.requests == []


def test_planted_lock_symlink_leaves_the_victim_untouched(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """agent.lock planted as a symlink to a victim file: exit 3, the victim unchanged."""
    state = env / "state"
    state.mkdir(mode=0o700)
    victim = env / "victim"
    victim.write_text("precious\n")
    (state / "agent.lock").symlink_to(victim)
    code, _, err = check_once(state, monkeypatch, capsys)
    assert code == 3
    assert "symbolic link" in err
    assert str(state / "agent.lock") in err
    assert victim.read_text() == "precious\n"
    assert api_server.requests == []


def test_planted_outbox_symlink_is_not_followed(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An ``outbox`` symlink to another dir: exit 3, nothing created or deleted there."""
    state = env / "state"
    state.mkdir(mode=0o700)
    elsewhere = env / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "seg-000000000001.json").write_text("theirs\n")
    (elsewhere / ".seg-000000000002.json.tmp").write_text("theirs too\n")
    (state / "outbox").symlink_to(elsewhere)
    code, _, err = check_once(state, monkeypatch, capsys)
    assert code == 3
    assert str(state / "outbox") in err
    assert sorted(p.name for p in elsewhere.iterdir()) == [
        ".seg-000000000002.json.tmp",
        "seg-000000000001.json",
    ]
    assert (elsewhere / "seg-000000000001.json").read_text() == "theirs\n"
    assert api_server.requests == []


def test_symlinked_outbox_is_refused_by_the_outbox_itself(tmp_path: Path) -> None:
    """Outbox.open refuses a link as its folder (StateDirError), whoever calls it."""
    (tmp_path / "real").mkdir()
    (tmp_path / "outbox").symlink_to(tmp_path / "real")
    with pytest.raises(StateDirError, match="symbolic link"):
        Outbox.open(tmp_path / "outbox")


def test_state_dir_symlink_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    """A state dir path that is a link owned by another user is not followed."""
    need_root("lchowns a link to another user")
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(StateDirError, match="symbolic link made by"):
        open_folder(link)


@pytest.mark.parametrize("umask", [0o777, 0o000, 0o022])
def test_modes_are_0700_and_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """The state dir, the outbox dir, the lock and the segments get 0700/0600 under any
    umask (0777 would otherwise make files nobody can read, 000 files anyone can)."""
    state = tmp_path / "state"
    old = os.umask(umask)
    try:
        with StateLock(state):
            box = Outbox.open(state / "outbox")
            box.add([Record(1, {"domain": {}})])
    finally:
        os.umask(old)
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "outbox").stat().st_mode & 0o777 == 0o700
    assert (state / "agent.lock").stat().st_mode & 0o777 == 0o600
    (segment,) = (state / "outbox").glob("seg-*.json")
    assert segment.stat().st_mode & 0o777 == 0o600
    assert [r.domain_id for r in Outbox.open(state / "outbox").pending()] == [1]


def test_folder_lists_every_entry_after_a_listing_another_process_left_half_done(
    tmp_path: Path,
) -> None:
    """A listing through a copy of the folder's fd (a forked cycle killed mid-listing)
    moves the position every copy shares; the folder still lists every entry."""
    import ctypes  # noqa: PLC0415 - only this test reads a directory the C way

    for number in range(50):
        (tmp_path / f"seg-{number:012d}.json").write_bytes(b"")
    with open_folder(tmp_path) as folder:
        assert folder.fd is not None
        libc = ctypes.CDLL(None)
        libc.fdopendir.restype = ctypes.c_void_p
        libc.readdir.restype = ctypes.c_void_p
        copy = libc.fdopendir(os.dup(folder.fd))  # never closed: as a killed process leaves it
        for _ in range(30):
            libc.readdir(ctypes.c_void_p(copy))
        assert len(folder.names()) == 50
