"""The outbox: a write-ahead store of results not yet accepted by the API, in the state dir.

A result is written before its post is attempted and leaves once the API accepted it, so
delivery is at-least-once: a crash can cause a result to be posted twice, never lost.

On disk it is a folder of segment files ``seg-<n>.json``, each holding one batch of
records and each written atomically (``outbox_disk``: temporary file, fsync, rename, fsync
of the folder), so a crash or power loss leaves every segment whole or absent. A segment is
a header line and then one JSON record per line (``outbox_format``), so one bad record
costs only itself; segments of version 1 (one JSON document) are still read. This module
keeps the bookkeeping: delivered records are forgotten in memory; a segment is deleted once
none of its records is still pending, and ``close()`` compacts what is left into one
segment. When several segments name the same ``domain_id`` the newest wins.

Loading never raises on content: a segment with unreadable records (nesting, size, wrong
types, any bytes) keeps its readable ones in a new segment and is moved aside as
``*.corrupt`` with one warning, and a load reads a bounded number of bytes. Files the
agent did not make (links, odd names, anything not a plain file) are left alone. When a
write fails (disk full, read-only), the outbox keeps the rest of the cycle in memory and
says so once: ``problem`` is then set and the cycle posts directly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trackssl_agent import log
from trackssl_agent.state.outbox_disk import DEFERRED, SegmentFiles
from trackssl_agent.state.outbox_format import (
    DEFAULT_LIMIT,
    MAX_RECORD_BYTES,
    JsonBytes,
    Loaded,
    Record,
    encode,
    parse_segment,
)
from trackssl_agent.state.statedir import Folder, explain, open_folder

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LOAD_BYTES",
    "MAX_RECORD_BYTES",
    "JsonBytes",
    "Outbox",
    "Record",
    "Waiting",
    "encode",
    "parse_segment",
]

logger = log.get_logger(__name__)

MAX_LOAD_BYTES = 256 << 20
"""What one load reads at most; segments past it wait for a later load."""
_WARNINGS = 10
"""Damaged segments named one by one; the rest are counted in one more line."""


@dataclass
class _Segment:
    name: str | None
    """The file name; None while it is held in memory only (the state dir failed)."""
    size: int
    alive: set[int] = field(default_factory=set)
    """domain_ids whose current record lives in it."""


@dataclass
class _Entry:
    record: Record
    segment: int
    order: int


class Outbox:
    """Pending results by ``domain_id``; thread-safe. Open with ``Outbox.open``."""

    def __init__(
        self, disk: SegmentFiles | None, *, limit: int = DEFAULT_LIMIT, problem: str | None = None
    ) -> None:
        self._disk = disk
        """Where segments are written; None for an outbox that stores nothing."""
        self.directory = disk.folder.path if disk is not None else None
        self.limit = limit
        self.problem = problem
        """Why results are not stored (said once when it happened), or None."""
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._segments: dict[int, _Segment] = {}
        self._next_id = 1
        self._order = 0
        self._dirty = False

    @classmethod
    def open(cls, directory: Path, *, limit: int = DEFAULT_LIMIT) -> Outbox:
        """Load every segment in ``directory`` (created 0700 if missing; a link there is
        refused). StateDirError or OSError when the folder itself cannot be used."""
        return cls.load(open_folder(directory, follow=False), limit=limit)

    @classmethod
    def load(cls, folder: Folder, *, limit: int = DEFAULT_LIMIT) -> Outbox:
        """Load every segment of an opened ``folder``, which the outbox then owns."""
        disk = SegmentFiles(folder)
        outbox = cls(disk, limit=limit)
        try:
            outbox._load(disk)
        except BaseException:
            disk.close()
            raise
        return outbox

    @classmethod
    def in_memory(cls, problem: str, *, limit: int = DEFAULT_LIMIT) -> Outbox:
        """An outbox that stores nothing: the state dir could not be used (``problem``)."""
        return cls(None, limit=limit, problem=problem)

    def _load(self, disk: SegmentFiles) -> None:
        damaged: list[tuple[int, str, Loaded]] = []
        budget = MAX_LOAD_BYTES
        deferred = dropped = 0
        for name in disk.scan():
            loaded = disk.read(name, budget, may_defer=bool(self._segments), keep=self.limit)
            if loaded is DEFERRED:
                deferred += 1
                continue
            if loaded is None:
                continue
            budget -= loaded.size
            seg_id = self._new_segment(name, len(loaded.records))
            self._place(loaded.records, seg_id)
            dropped += len(self._trim())  # memory stays bounded however much is on disk
            if loaded.bad:
                damaged.append((seg_id, name, loaded))
        if deferred:
            logger.warning(
                "the outbox %s holds more than %d MiB; %d segment(s) wait for a later cycle",
                self.directory, MAX_LOAD_BYTES >> 20, deferred,
            )  # fmt: skip
        for index, (seg_id, name, loaded) in enumerate(damaged):
            self._set_aside(disk, seg_id, name, loaded, quiet=index >= _WARNINGS)
        if len(damaged) > _WARNINGS:
            logger.warning(
                "%d more outbox segments were damaged and moved aside the same way",
                len(damaged) - _WARNINGS,
            )
        if dropped:
            self._dirty = True
            logger.warning(
                "the outbox holds more than %d undelivered results; dropped the %d oldest",
                self.limit, dropped,
            )  # fmt: skip

    def _set_aside(
        self, disk: SegmentFiles, seg_id: int, name: str, loaded: Loaded, *, quiet: bool
    ) -> None:
        """Keep the readable records of a damaged segment in a new one, then move it aside."""
        segment = self._segments[seg_id]
        kept = [self._entries[d].record for d in self._ordered(segment.alive)]
        if kept and not self._store(kept, seg_id):
            return  # not durable elsewhere yet: the damaged file stays where it is
        aside = disk.move_aside(name)
        if not kept:
            self._segments.pop(seg_id, None)
        if not quiet:
            logger.warning(
                "outbox segment %s: %d record(s) unreadable (%s); kept %d, moved it to %s",
                disk.folder.path / name, loaded.bad, loaded.reason, len(kept), aside,
            )  # fmt: skip

    def _ordered(self, domain_ids: Iterable[int]) -> list[int]:
        return sorted(domain_ids, key=lambda d: self._entries[d].order)

    def _new_segment(self, name: str | None, size: int) -> int:
        seg_id = self._next_id
        self._next_id += 1
        self._segments[seg_id] = _Segment(name, size)
        return seg_id

    def _store(self, records: list[Record], seg_id: int) -> bool:
        """Write ``records`` as a new segment file that replaces segment ``seg_id`` in
        the bookkeeping; False (and the outbox degraded) when the write failed."""
        name = self._write(records)
        if name is None:
            return False
        self._segments[seg_id] = _Segment(name, len(records), self._segments[seg_id].alive)
        return True

    def _write(self, records: list[Record], *, again: bool = False) -> str | None:
        """A new segment file holding ``records``, or None when the outbox cannot write.
        Once a write failed no other is tried, unless ``again``."""
        if self._disk is None or (self.problem is not None and not again):
            return None
        try:
            return self._disk.write(records)
        except OSError as exc:
            self._degrade(exc)
            return None

    def _degrade(self, exc: OSError) -> None:
        if self.problem is not None:
            return  # said once
        why, fix = explain(exc)
        self.problem = (
            f"the outbox {self.directory} cannot be used: {why}; the rest of this cycle "
            f"posts directly, keeping nothing on disk: {fix}"
        )
        logger.warning("%s", self.problem, extra={"fields": {"event": "state_dir_unusable"}})

    def _place(self, records: Iterable[Record], segment: int) -> None:
        for record in records:
            old = self._entries.get(record.domain_id)
            if old is not None:
                self._segments[old.segment].alive.discard(record.domain_id)
            self._order += 1
            self._entries[record.domain_id] = _Entry(record, segment, self._order)
            self._segments[segment].alive.add(record.domain_id)

    def _trim(self) -> list[_Entry]:
        """Drop the oldest entries past the limit; the dropped ones."""
        excess = len(self._entries) - self.limit
        if excess <= 0:
            return []
        oldest = sorted(self._entries.values(), key=lambda e: e.order)[:excess]
        for entry in oldest:
            del self._entries[entry.record.domain_id]
            self._segments[entry.segment].alive.discard(entry.record.domain_id)
        self._dirty = True
        return oldest

    def _enforce_limit(self) -> None:
        oldest = self._trim()
        if not oldest:
            return
        excess = len(oldest)
        logger.warning(
            "the outbox holds more than %d undelivered results; dropped the %d oldest "
            "(domain_id %s%s)",
            self.limit, excess, ", ".join(str(e.record.domain_id) for e in oldest[:10]),
            ", ..." if excess > 10 else "",
        )  # fmt: skip

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def unsaved(self) -> int:
        """Pending records held in memory only: lost if the process ends now."""
        with self._lock:
            return sum(1 for e in self._entries.values() if self._segments[e.segment].name is None)

    def pending(self) -> list[Record]:
        """Every undelivered record, oldest first."""
        with self._lock:
            return [e.record for e in sorted(self._entries.values(), key=lambda e: e.order)]

    def is_current(self, record: Record) -> bool:
        """False once ``record`` was delivered or replaced by a newer one."""
        with self._lock:
            entry = self._entries.get(record.domain_id)
            return entry is not None and entry.record is record

    def add(self, records: list[Record]) -> None:
        """Store ``records`` durably in one write; each replaces an older one of its domain.

        When the write fails the records are kept in memory (and ``problem`` says why), so
        the cycle can still post them."""
        if not records:
            return
        with self._lock:
            seg_id = self._new_segment(self._write(records), len(records))
            self._place(records, seg_id)
            self._enforce_limit()
            self._dirty = True

    def done(self, record: Record) -> None:
        """The API accepted ``record`` (or refused it for good): forget it."""
        with self._lock:
            entry = self._entries.get(record.domain_id)
            if entry is not None and entry.record is record:
                del self._entries[record.domain_id]
                self._segments[entry.segment].alive.discard(record.domain_id)
                self._dirty = True

    def commit(self) -> None:
        """Delete segments with nothing pending; cheap, call it as often as convenient."""
        with self._lock:
            if not self._dirty:
                return
            self._remove([n for n, s in self._segments.items() if not s.alive])
            self._dirty = False

    def _remove(self, seg_ids: Iterable[int]) -> None:
        names = [self._segments.pop(seg_id).name for seg_id in seg_ids]
        if self._disk is not None:
            self._disk.remove(name for name in names if name is not None)

    def close(self) -> None:
        """Compact: everything pending into one new segment, then remove the rest; then
        release the folder. Records still only in memory are written here if the state dir
        allows it now."""
        self.commit()
        with self._lock:
            try:
                self._compact()
            finally:
                if self._disk is not None:
                    self._disk.close()

    def _compact(self) -> None:
        segments = list(self._segments.values())
        if self._disk is None or (
            len(segments) <= 1
            and all(s.name is not None and len(s.alive) == s.size for s in segments)
        ):
            return  # already one segment holding nothing but pending records
        records = [e.record for e in sorted(self._entries.values(), key=lambda e: e.order)]
        old = list(self._segments)
        if records:
            # Tried even after a failed write: space may have been freed meanwhile.
            name = self._write(records, again=True)
            if name is None:
                return  # the old segments stay: they still hold what they held
            seg_id = self._new_segment(name, len(records))
            self._entries.clear()
            for number in old:
                self._segments[number].alive.clear()
            self._place(records, seg_id)
        self._remove(old)


@dataclass(frozen=True)
class Waiting:
    """What an outbox folder holds, as ``doctor`` reports it."""

    results: int
    """Results waiting, one per domain."""
    segments: int
    """Segment files the next load reads."""
    others: tuple[str, ...]
    """Names of the other entries, which no load reads (``*.corrupt`` files, files put
    there by someone else)."""


def count_waiting(folder: Folder) -> Waiting:
    """What waits in the outbox ``folder``, read without changing a byte (``doctor``): the
    same files a load reads, and the names of the rest."""
    disk = SegmentFiles(folder)
    names = disk.scan(tidy=False)
    waiting: set[int] = set()
    budget = MAX_LOAD_BYTES
    for name in names:
        loaded = disk.read(name, budget, may_defer=False, keep=DEFAULT_LIMIT)
        if loaded is None or loaded is DEFERRED:
            continue
        budget -= loaded.size
        waiting.update(record.domain_id for record in loaded.records)
    return Waiting(len(waiting), len(names), tuple(disk.others()))
