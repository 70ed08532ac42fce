"""The outbox (durable, batched, replacing, bounded) and the state-dir lock."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api_server import UNAUTHORIZED, ApiServer, domain_entries
from tests.listeners import closed_port
from trackssl_agent.doctor import local
from trackssl_agent.doctor.values import Status
from trackssl_agent.errors import LockError
from trackssl_agent.state import outbox, outbox_disk, outbox_format
from trackssl_agent.state.lock import StateLock
from trackssl_agent.state.outbox import JsonBytes, Outbox, Record
from trackssl_agent.state.outbox_disk import SegmentFiles
from trackssl_agent.state.statedir import Folder, open_folder

ROOT = Path(__file__).resolve().parents[2]


def record(domain_id: int, tag: str = "a") -> Record:
    """A record whose payload says which version it is."""
    return Record(domain_id, {"domain": {"domain_id": domain_id, "tag": tag}})


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


_WRITER = """
import os, sys, time
from pathlib import Path
from trackssl_agent.state.outbox import Outbox, Record
box = Outbox.open(Path(sys.argv[1]))
n = 0
while True:
    pad = {"pad": "x" * 4000}
    box.add([Record(i, {"domain": {"domain_id": i, **pad}}) for i in range(n, n + 50)])
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
        data = path.read_bytes()  # whole, or it would not be named seg-*.json
        assert data.endswith(b"\n")
        for line in data.splitlines():
            json.loads(line)
    pending = Outbox.open(tmp_path).pending()
    assert len(pending) >= written


class _RecordingFolder(Folder):
    """The outbox's folder, noting each step of a segment write as it happens; with
    ``sync_file`` (passed to SegmentFiles as its fsync) the file's own fsync too."""

    def __init__(self, folder: Folder) -> None:
        super().__init__(folder.path, folder.fd)
        folder.fd = None  # handed over: this one closes it
        self.steps: list[tuple[object, ...]] = []
        self._names: dict[int, str] = {}

    def _on_disk(self) -> list[str]:
        return [p.name for p in segments(self.path)]

    def create(self, name: str, access: int = os.O_WRONLY) -> int:
        fd = super().create(name, access)
        self._names[fd] = name
        self.steps.append(("create", name, self._on_disk()))
        return fd

    def sync_file(self, fd: int) -> None:
        self.steps.append(("fsync file", self._names[fd], os.fstat(fd).st_size))
        os.fsync(fd)

    def rename(self, source: str, target: str) -> None:
        self.steps.append(("rename", source, target))
        super().rename(source, target)

    def fsync(self) -> None:
        self.steps.append(("fsync folder", self._on_disk()))
        super().fsync()


def test_a_segment_is_written_to_a_temporary_fsynced_renamed_then_the_folder_fsynced(
    tmp_path: Path,
) -> None:
    """Outbox.add writes a segment durably and atomically, in this order: a temporary file
    (no segment visible yet), all its bytes and their fsync, the rename over the segment's
    name, then the fsync of the folder that makes the rename durable."""
    folder = _RecordingFolder(open_folder(tmp_path / "outbox", follow=False))
    box = Outbox(SegmentFiles(folder, fsync=folder.sync_file))
    box.add([record(1), record(2)])
    [segment] = segments(folder.path)
    assert [step[0] for step in folder.steps] == [
        "create", "fsync file", "rename", "fsync folder",
    ]  # fmt: skip
    (_, temporary, visible), (_, synced, size), (_, source, target), (_, after) = folder.steps
    assert temporary != segment.name and visible == []  # not written in place
    assert synced == source == temporary and target == segment.name
    assert size == len(segment.read_bytes()) > 0  # every byte was written before the fsync
    assert after == [segment.name]  # the folder's fsync comes after the rename
    box.close()


def test_second_lock_names_the_holder(tmp_path: Path) -> None:
    """A second agent on the same state dir gets LockError (exit 3) with the holder's pid."""
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys,time; from pathlib import Path; "
            "from trackssl_agent.state.lock import StateLock;"
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


# -- hostile and damaged content (issue 9, part 4) -----------------------------------------


def line(value: object) -> bytes:
    """One stored line."""
    return json.dumps(value).encode() + b"\n"


def stored(domain_id: int, tag: str = "a") -> bytes:
    """A record line as the outbox writes it."""
    return line(record(domain_id, tag).to_json())


def load_quietly(directory: Path) -> Outbox:
    """Open the outbox, asserting that loading itself raised nothing."""
    return Outbox.open(directory)


def test_nested_json_segment_is_moved_aside_and_loading_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: ``[`` x 100,000 in a segment was an internal RecursionError on every
    cycle; now it is set aside with one warning and the other segments load."""
    logging.getLogger("trackssl_agent").propagate = True
    (tmp_path / "seg-000000000001.json").write_bytes(stored(1))
    (tmp_path / "seg-000000000002.json").write_bytes(b"[" * 100_000)
    with caplog.at_level(logging.WARNING, logger="trackssl_agent"):
        box = load_quietly(tmp_path)
    assert [r.domain_id for r in box.pending()] == [1]
    assert (tmp_path / "seg-000000000002.json.corrupt").exists()
    assert not (tmp_path / "seg-000000000002.json").exists()
    warnings = [r for r in caplog.records if "seg-000000000002.json" in r.getMessage()]
    assert len(warnings) == 1
    assert "nested too deeply" in warnings[0].getMessage()


def test_one_bad_record_costs_only_itself(tmp_path: Path) -> None:
    """Regression: one bad record set its whole segment aside, good records with it. Now
    the readable records are rewritten to a new segment first, then the file moves aside."""
    segment = tmp_path / "seg-000000000003.json"
    segment.write_bytes(
        line({"version": 2}) + stored(1) + b"[[[{not json\n" + stored(2) + line({"domain_id": "x"})
    )
    box = load_quietly(tmp_path)
    assert [r.domain_id for r in box.pending()] == [1, 2]
    assert (tmp_path / "seg-000000000003.json.corrupt").read_bytes().count(b"\n") == 5
    assert [r.domain_id for r in Outbox.open(tmp_path).pending()] == [1, 2]  # durable
    assert len(list(tmp_path.glob("*.corrupt"))) == 1  # said and moved once, not again


def test_segment_number_past_12_digits_is_reloaded(tmp_path: Path) -> None:
    """Regression: ``seg-<13 digits>.json`` was never reloaded; it is, in number order,
    and the next segment is numbered after it."""
    (tmp_path / "seg-000000000002.json").write_bytes(stored(5, "older"))
    (tmp_path / "seg-1000000000000.json").write_bytes(stored(5, "newer") + stored(6))
    box = load_quietly(tmp_path)
    assert {r.domain_id: r.payload["domain"]["tag"] for r in box.pending()} == {
        5: "newer",
        6: "a",
    }
    box.add([record(7)])
    assert (tmp_path / "seg-1000000000001.json").exists()


def test_version_1_segments_are_still_read_record_by_record(tmp_path: Path) -> None:
    """Segments of the previous format (one JSON document) load; a bad record in one costs
    only itself."""
    document = {
        "version": 1,
        "records": [record(1).to_json(), {"domain_id": True, "payload": {}}, record(2).to_json()],
    }
    (tmp_path / "seg-000000000001.json").write_text(json.dumps(document, separators=(",", ":")))
    box = load_quietly(tmp_path)
    assert [r.domain_id for r in box.pending()] == [1, 2]


@pytest.mark.parametrize(
    "value",
    [
        {"domain_id": "1", "payload": {}},
        {"domain_id": True, "payload": {}},
        {"domain_id": -1, "payload": {}},
        {"domain_id": 2**64, "payload": {}},
        {"domain_id": 1.5, "payload": {}},
        {"domain_id": 1, "payload": []},
        {"domain_id": 1},
        [1, 2],
        "text",
        None,
        {"version": 1, "records": "nope"},
    ],
)
def test_wrong_types_are_unreadable_records(tmp_path: Path, value: object) -> None:
    """A record of the wrong shape is skipped; a good one beside it loads."""
    (tmp_path / "seg-000000000001.json").write_bytes(line(value) + stored(9))
    assert [r.domain_id for r in load_quietly(tmp_path).pending()] == [9]


def test_overlong_record_line_is_skipped_unread(tmp_path: Path) -> None:
    """A line past MAX_RECORD_BYTES is skipped without being parsed; the next one loads."""
    huge = b'{"domain_id": 1, "payload": {"x": "' + b"y" * (outbox.MAX_RECORD_BYTES + 10) + b'"}}\n'
    (tmp_path / "seg-000000000001.json").write_bytes(huge + stored(2))
    assert [r.domain_id for r in load_quietly(tmp_path).pending()] == [2]


def test_load_reads_a_bounded_amount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_LOAD_BYTES the remaining segments are left on disk for a later load, and
    load once the earlier ones are delivered."""
    monkeypatch.setattr(outbox, "MAX_LOAD_BYTES", 600)
    for n in range(1, 6):
        (tmp_path / f"seg-{n:012d}.json").write_bytes(stored(n, "z" * 100))
    box = load_quietly(tmp_path)
    first = box.pending()
    assert 1 <= len(first) < 5
    for item in first:
        box.done(item)
    box.close()
    rest = Outbox.open(tmp_path).pending()
    assert [r.domain_id for r in rest] == list(range(len(first) + 1, 6))[: len(rest)]
    assert rest


def test_huge_first_segment_is_read_up_to_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single segment larger than the whole budget: its first records load, the file
    moves aside, and nothing past the budget is read."""
    monkeypatch.setattr(outbox, "MAX_LOAD_BYTES", 1000)
    data = b"".join(stored(n) for n in range(1, 200))
    (tmp_path / "seg-000000000001.json").write_bytes(data)
    box = load_quietly(tmp_path)
    assert 1 <= len(box) < 199
    assert (tmp_path / "seg-000000000001.json.corrupt").read_bytes() == data


def test_planted_files_in_the_outbox_are_left_alone(tmp_path: Path) -> None:
    """A FIFO, a symlink or a directory under a segment's (or a temporary's) name is neither
    opened blocking, followed, renamed nor deleted."""
    victim = tmp_path / "victim"
    victim.write_bytes(stored(1))
    box_dir = tmp_path / "outbox"
    box_dir.mkdir(mode=0o700)
    os.mkfifo(box_dir / "seg-000000000001.json")
    (box_dir / "seg-000000000002.json").symlink_to(victim)
    (box_dir / ".seg-000000000003.json.tmp").symlink_to(victim)
    (box_dir / "seg-000000000004.json").mkdir()
    (box_dir / "seg-000000000005.json").write_bytes(stored(5))
    names = sorted(p.name for p in box_dir.iterdir())
    box = load_quietly(box_dir)
    assert [r.domain_id for r in box.pending()] == [5]
    box.add([record(6)])
    box.close()
    assert victim.read_bytes() == stored(1)
    assert set(names) - {"seg-000000000005.json"} <= {p.name for p in box_dir.iterdir()}


_GOOD = st.builds(record, st.integers(0, 2**40), st.text(max_size=20))
_JUNK_LINE = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" "))
_HOSTILE_LINE = st.one_of(
    _JUNK_LINE,
    st.integers(1, 3000).map(lambda n: b"[" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    junk=st.lists(_HOSTILE_LINE, max_size=8),
    good=st.lists(_GOOD, max_size=5, unique_by=lambda r: r.domain_id),
    raw=st.binary(max_size=2000),
)
def test_fuzz_hostile_segments_never_raise_and_keep_good_records(
    tmp_path_factory: pytest.TempPathFactory,
    junk: list[bytes],
    good: list[Record],
    raw: bytes,
) -> None:
    """Any bytes in any segment: loading never raises, and every well-formed record line
    interleaved with hostile lines is recovered (and stays recovered after a reload)."""
    directory = tmp_path_factory.mktemp("fuzz")
    lines = [line(r.to_json()) for r in good]
    mixed = [*(j + b"\n" for j in junk)]
    for index, encoded in enumerate(lines):
        mixed.insert(min(index * 2, len(mixed)), encoded)
    (directory / "seg-000000000001.json").write_bytes(raw)
    (directory / "seg-000000000002.json").write_bytes(b"".join(mixed))
    box = Outbox.open(directory)
    got = {r.domain_id: r.payload for r in box.pending()}
    for item in good:
        assert got[item.domain_id] == item.payload
    box.close()
    again = {r.domain_id for r in Outbox.open(directory).pending()}
    assert {r.domain_id for r in good} <= again


@settings(max_examples=200, deadline=1000)
@given(data=st.binary(max_size=4000), budget=st.integers(1, 5000))
def test_fuzz_parse_segment_stays_within_its_budget(data: bytes, budget: int) -> None:
    """parse_segment never raises and never reads past its budget."""
    stream = io.BufferedReader(io.BytesIO(data))
    loaded = outbox.parse_segment(stream, budget=budget)
    assert loaded.size <= budget
    assert len(loaded.records) <= outbox.DEFAULT_LIMIT


def test_json_bytes_records_are_stored_as_built(tmp_path: Path) -> None:
    """A record holding the post body's bytes is stored with those bytes, reloads as the
    same payload, and posts the same bytes."""
    body = b'{"domain":{"domain_id":5,"chain":["-----BEGIN CERTIFICATE-----\\nMII\\n"]}}'
    record = Record(5, JsonBytes(body))
    assert record.data() is body
    assert body in record.line()
    box = Outbox.open(tmp_path)
    box.add([record])
    box.close()
    (loaded,) = Outbox.open(tmp_path).pending()
    assert loaded.payload == json.loads(body)
    assert loaded.data() == body


# -- the split into outbox_format / outbox_disk / outbox (issue 12) ------------------------


def test_records_written_before_queued_at_was_dropped_still_load(tmp_path: Path) -> None:
    """Segments of both earlier formats whose records carry ``queued_at`` load, and a
    rewrite (compaction) stores them without it, payloads unchanged."""
    old_v2 = (
        b'{"version":2}\n'
        b'{"domain_id":1,"queued_at":"2026-01-01T00:00:00Z","payload":{"domain":{"tag":"a"}}}\n'
    )
    old_v1 = json.dumps(
        {
            "version": 1,
            "records": [
                {"domain_id": 2, "queued_at": "2025-12-31T00:00:00Z", "payload": {"d": 2}},
                {"domain_id": 3, "queued_at": 7, "payload": {"d": 3}},
            ],
        },
        separators=(",", ":"),
    ).encode()
    (tmp_path / "seg-000000000001.json").write_bytes(old_v2)
    (tmp_path / "seg-000000000002.json").write_bytes(old_v1)
    box = load_quietly(tmp_path)
    assert [(r.domain_id, dict(r.payload)) for r in box.pending()] == [
        (1, {"domain": {"tag": "a"}}),
        (2, {"d": 2}),
        (3, {"d": 3}),
    ]
    box.close()
    (compacted,) = segments(tmp_path)
    assert b"queued_at" not in compacted.read_bytes()
    assert [r.domain_id for r in Outbox.open(tmp_path).pending()] == [1, 2, 3]
    assert list(tmp_path.glob("*.corrupt")) == []


def test_new_records_are_stored_as_domain_id_and_payload_only() -> None:
    """A stored record line is exactly ``domain_id`` and ``payload``, whether the payload
    is the cycle's bytes or a mapping read back from a segment."""
    body = b'{"domain":{"domain_id":4}}'
    assert Record(4, JsonBytes(body)).line() == b'{"domain_id":4,"payload":' + body + b"}"
    assert Record(4, json.loads(body)).line() == b'{"domain_id":4,"payload":' + body + b"}"
    assert Record(4, JsonBytes(body)).to_json() == {"domain_id": 4, "payload": JsonBytes(body)}


@settings(max_examples=100, deadline=1000)
@given(good=st.lists(_GOOD, max_size=20))
def test_fuzz_encode_then_parse_segment_round_trips(good: list[Record]) -> None:
    """What ``encode`` writes, ``parse_segment`` reads back whole: same records in order,
    nothing rejected, every byte counted."""
    data = outbox_format.encode(good)
    stream = io.BufferedReader(io.BytesIO(data))
    loaded = outbox_format.parse_segment(stream, budget=len(data))
    assert [(r.domain_id, dict(r.payload)) for r in loaded.records] == [
        (r.domain_id, dict(r.payload)) for r in good
    ]
    assert (loaded.bad, loaded.size) == (0, len(data))


def test_a_damaged_segment_is_moved_to_a_free_corrupt_name(tmp_path: Path) -> None:
    """When ``<segment>.corrupt`` already exists (an earlier damaged copy), the new one goes
    to ``<segment>.corrupt-2`` and the earlier copy is not overwritten."""
    (tmp_path / "seg-000000000001.json.corrupt").write_bytes(b"earlier")
    (tmp_path / "seg-000000000001.json").write_bytes(b"not json\n" + stored(1))
    box = load_quietly(tmp_path)
    assert [r.domain_id for r in box.pending()] == [1]
    assert (tmp_path / "seg-000000000001.json.corrupt").read_bytes() == b"earlier"
    assert (tmp_path / "seg-000000000001.json.corrupt-2").read_bytes().startswith(b"not json")
    assert not (tmp_path / "seg-000000000001.json").exists()


def test_in_memory_outbox_keeps_results_and_touches_no_disk(tmp_path: Path) -> None:
    """An outbox without a state dir holds, replaces and forgets records in memory, counts
    them as unsaved, and closes without writing anything anywhere."""
    box = Outbox.in_memory("the state dir is read-only")
    first = record(1)
    box.add([first, record(2)])
    box.add([record(1, "new")])
    assert not box.is_current(first)
    assert (len(box), box.unsaved()) == (2, 2)
    box.done(box.pending()[0])
    box.commit()
    box.close()
    assert [r.domain_id for r in box.pending()] == [1]
    assert box.problem == "the state dir is read-only"
    assert box.directory is None


# -- segment numbers stay ones the loader reads (issue 18, finding 6) -----------------------


def _agent(api: ApiServer, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``trackssl-agent ARGS`` as a process of its own on the state dir ``state``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKSSL_", "_TRACKSSL"))}
    env.update(api.env(), TRACKSSL_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "trackssl_agent", *args],
        env=env, cwd=state.parent, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _readable_names(box: Path) -> bool:
    """Whether every file in ``box`` is a segment numbered within the writer's bound."""
    return all(
        name.startswith("seg-") and name.endswith(".json") and 12 <= len(name) - 9 <= 18
        for name in (p.name for p in box.iterdir())
    )


def test_a_planted_60_digit_segment_strands_no_result(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """``seg-<60 nines>.json`` in the outbox: the results queued next are still counted by
    ``doctor`` and re-sent by the next check-once; no name the loader skips is ever made."""
    state = tmp_path / "state"
    box = state / "outbox"
    box.mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    (box / f"seg-{'9' * 60}.json").write_bytes(line({"version": 2}) + stored(9))
    refused = closed_port()
    api_server.domains = domain_entries({1: refused, 2: refused, 3: refused})
    api_server.fail("certificate", UNAUTHORIZED)
    first = _agent(api_server, state, "check-once", "--timeout", "3")
    assert first.returncode == 2, first.stdout + first.stderr
    assert "queued 4" in first.stdout + first.stderr  # the planted one's record and 3 new
    assert _readable_names(box), sorted(p.name for p in box.iterdir())

    doctor = _agent(api_server, state, "doctor")
    assert "4 results wait to be delivered" in doctor.stdout, doctor.stdout

    api_server.clear()
    api_server.domains = []
    second = _agent(api_server, state, "check-once")
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(api_server.posted_ids()) == [1, 2, 3, 9]
    assert "queued 0" in second.stdout + second.stderr
    assert list(box.iterdir()) == []


def test_segments_at_the_number_limit_are_renumbered_in_order(tmp_path: Path) -> None:
    """A segment numbered at the limit leaves no number for the next: the load renumbers
    the segments from 1 in their order (the newest result still wins), the next segment
    follows them, and everything reloads."""
    top = outbox_disk.MAX_NUMBER
    (tmp_path / "seg-000000000005.json").write_bytes(stored(1, "oldest") + stored(2))
    (tmp_path / f"seg-{top - 1}.json").write_bytes(stored(1, "older"))
    (tmp_path / f"seg-{top}.json").write_bytes(stored(1, "newest"))
    box = load_quietly(tmp_path)
    assert [p.name for p in segments(tmp_path)] == [
        "seg-000000000001.json",
        "seg-000000000002.json",
        "seg-000000000003.json",
    ]
    box.add([record(3)])
    assert (tmp_path / "seg-000000000004.json").exists()
    again = {r.domain_id: r.payload["domain"]["tag"] for r in load_quietly(tmp_path).pending()}
    assert again == {1: "newest", 2: "a", 3: "a"}


def test_a_segment_past_60_digits_is_read_again(tmp_path: Path) -> None:
    """A 61-digit segment (what an earlier version made after a 60-digit one) is read, not
    stranded, and renumbered into range."""
    (tmp_path / f"seg-1{'0' * 60}.json").write_bytes(stored(7))
    box = load_quietly(tmp_path)
    assert [r.domain_id for r in box.pending()] == [7]
    assert [p.name for p in segments(tmp_path)] == ["seg-000000000001.json"]


def test_doctor_names_files_no_cycle_reads(tmp_path: Path) -> None:
    """doctor counts what is on disk: a segment set aside as ``*.corrupt`` is named, with a
    warning, even when no result waits."""
    state = tmp_path / "state"
    (state / "outbox").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    (state / "outbox" / "seg-000000000001.json.corrupt").write_bytes(b"damaged")
    with open_folder(state) as folder:
        check = local._outbox(folder)
    assert check.status is Status.WARN
    assert "1 other file(s) that no cycle reads (seg-000000000001.json.corrupt)" in check.detail
    assert "delete them" in check.fix
