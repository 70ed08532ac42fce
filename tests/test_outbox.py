"""The outbox (durable, batched, replacing, bounded) and the state-dir lock."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trackssl_agent.errors import LockError
from trackssl_agent.lock import StateLock
from trackssl_agent.outbox import Outbox, Record, write_atomic

ROOT = Path(__file__).resolve().parent.parent


def record(domain_id: int, tag: str = "a") -> Record:
    """A record whose payload says which version it is."""
    return Record(
        domain_id, {"domain": {"domain_id": domain_id, "tag": tag}}, "2026-01-01T00:00:00Z"
    )


def segments(directory: Path) -> list[Path]:
    """The segment files on disk."""
    return sorted(directory.glob("seg-*.json"))


def test_records_survive_a_reopen_in_order(tmp_path: Path) -> None:
    """What was added and not delivered is there after reopening, oldest first."""
    box = Outbox.open(tmp_path / "outbox")
    box.add([record(1), record(2)])
    box.add([record(3)])
    again = Outbox.open(tmp_path / "outbox")
    assert [r.domain_id for r in again.pending()] == [1, 2, 3]


def test_one_write_per_batch(tmp_path: Path) -> None:
    """A batch of results costs one segment file (one fsync), not one per result."""
    box = Outbox.open(tmp_path)
    box.add([record(n) for n in range(100)])
    assert len(segments(tmp_path)) == 1


def test_delivered_records_leave(tmp_path: Path) -> None:
    """done() + commit() removes a fully delivered segment; close() compacts the rest."""
    box = Outbox.open(tmp_path)
    first, second = [record(1), record(2)], [record(3)]
    box.add(first)
    box.add(second)
    box.done(first[0])
    box.done(first[1])
    box.commit()
    assert len(segments(tmp_path)) == 1
    assert [r.domain_id for r in Outbox.open(tmp_path).pending()] == [3]
    box.done(second[0])
    box.close()
    assert segments(tmp_path) == []
    assert len(Outbox.open(tmp_path)) == 0


def test_newer_result_replaces_older(tmp_path: Path) -> None:
    """A newer result for the same domain_id replaces the older one, also after reopen."""
    box = Outbox.open(tmp_path)
    old = record(7, "old")
    box.add([old, record(8)])
    box.add([record(7, "new")])
    assert not box.is_current(old)
    pending = {r.domain_id: r.payload["domain"]["tag"] for r in box.pending()}
    assert pending == {7: "new", 8: "a"}
    reopened = {r.domain_id: r.payload["domain"]["tag"] for r in Outbox.open(tmp_path).pending()}
    assert reopened == {7: "new", 8: "a"}
    box.close()
    assert len(segments(tmp_path)) == 1


def test_partly_delivered_segment_is_compacted(tmp_path: Path) -> None:
    """close() rewrites a partly delivered segment so delivered results are not re-sent."""
    box = Outbox.open(tmp_path)
    batch = [record(1), record(2)]
    box.add(batch)
    box.done(batch[0])
    box.close()
    assert [r.domain_id for r in Outbox.open(tmp_path).pending()] == [2]


def test_bounded_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Past the limit the oldest results are dropped, with a warning naming them."""
    logging.getLogger("trackssl_agent").propagate = True
    box = Outbox.open(tmp_path, limit=3)
    with caplog.at_level(logging.WARNING, logger="trackssl_agent"):
        box.add([record(1), record(2)])
        box.add([record(3), record(4), record(5)])
    assert [r.domain_id for r in box.pending()] == [3, 4, 5]
    assert "dropped the 2 oldest (domain_id 1, 2)" in caplog.text
    box.close()
    assert [r.domain_id for r in Outbox.open(tmp_path, limit=3).pending()] == [3, 4, 5]


def test_torn_and_corrupt_files_are_handled(tmp_path: Path) -> None:
    """A leftover temporary file is ignored; an unreadable segment is moved aside."""
    box = Outbox.open(tmp_path)
    box.add([record(1)])
    (tmp_path / ".seg-000000000099.json.tmp").write_bytes(b'{"records": [{"doma')
    (tmp_path / "seg-000000000050.json").write_bytes(b"not json")
    again = Outbox.open(tmp_path)
    assert [r.domain_id for r in again.pending()] == [1]
    assert not (tmp_path / ".seg-000000000099.json.tmp").exists()
    assert (tmp_path / "seg-000000000050.json.corrupt").exists()


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    """write_atomic leaves the new content and no temporary file."""
    target = tmp_path / "f.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


_WRITER = """
import os, sys, time
from pathlib import Path
from trackssl_agent.outbox import Outbox, Record
box = Outbox.open(Path(sys.argv[1]))
n = 0
while True:
    pad = {"pad": "x" * 4000}
    box.add([Record(i, {"domain": {"domain_id": i, **pad}}, "t") for i in range(n, n + 50)])
    n += 50
    print(n, flush=True)
"""


def test_survives_sigkill_mid_write(tmp_path: Path) -> None:
    """A writer killed with SIGKILL at a random instant leaves only whole segments."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    written = 0
    while written < 500:
        written = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for path in segments(tmp_path):
        json.loads(path.read_bytes())  # whole, or it would not be named seg-*.json
    pending = Outbox.open(tmp_path).pending()
    assert len(pending) >= written


def test_second_lock_names_the_holder(tmp_path: Path) -> None:
    """A second agent on the same state dir gets LockError (exit 3) with the holder's pid."""
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys,time; from pathlib import Path; from trackssl_agent.lock import StateLock;"
            "l=StateLock(Path(sys.argv[1])); l.acquire(); print('locked', flush=True);"
            "time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError, match=f"pid {holder.pid}") as caught:
            StateLock(tmp_path).acquire()
        assert caught.value.exit_code == 3
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while True:  # the kernel drops a SIGKILLed holder's lock
        try:
            with StateLock(tmp_path):
                break
        except LockError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    """A lock file naming a dead pid does not stop the next agent."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "agent.lock").write_text(f"{dead.pid}\n")
    with StateLock(tmp_path) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
    with StateLock(tmp_path):
        pass  # released, and taken again
