"""The outbox: a write-ahead store of results not yet accepted by the API, in the state dir.

A result is written before its post is attempted and leaves once the API accepted it, so
delivery is at-least-once: a crash can cause a result to be posted twice, never lost.

On disk it is a folder of segment files ``seg-<n>.json``, each holding one batch of
records and each written atomically (temporary file, fsync, rename, fsync of the folder),
so a crash or power loss leaves every segment whole or absent. Delivered records are
forgotten in memory; a segment is deleted once none of its records is still pending, and
``close()`` compacts what is left into one segment. When several segments name the same
``domain_id`` the newest wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trackssl_agent import log

logger = log.get_logger(__name__)

DEFAULT_LIMIT = 10_000
_SEGMENT = re.compile(r"^seg-(\d{12})\.json$")
_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One undelivered result: the post body of SPEC section 5 and when it was queued."""

    domain_id: int
    payload: Mapping[str, Any]
    queued_at: str

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {"domain_id": self.domain_id, "queued_at": self.queued_at, "payload": self.payload}

    @staticmethod
    def from_json(value: Any) -> Record:
        """Parse the stored form; ValueError when it is not one."""
        if not isinstance(value, dict):
            raise ValueError("a record is not an object")
        domain_id, payload = value.get("domain_id"), value.get("payload")
        if not isinstance(domain_id, int) or not isinstance(payload, dict):
            raise ValueError("a record lacks domain_id or payload")
        return Record(domain_id, payload, str(value.get("queued_at", "")))


@dataclass
class _Entry:
    record: Record
    segment: int
    order: int


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where folders can't be opened)."""
    if os.name == "nt":
        return  # NTFS journals metadata; a folder cannot be opened for fsync there
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    """Pending results by ``domain_id``; thread-safe. Open with ``Outbox.open``."""

    def __init__(self, directory: Path, *, limit: int = DEFAULT_LIMIT) -> None:
        self.directory = directory
        self.limit = limit
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._alive: dict[int, set[int]] = {}
        """segment number -> domain_ids whose current record lives in it."""
        self._sizes: dict[int, int] = {}
        """segment number -> how many records the file holds."""
        self._next_segment = 1
        self._order = 0
        self._dirty = False

    @classmethod
    def open(cls, directory: Path, *, limit: int = DEFAULT_LIMIT) -> Outbox:
        """Load every segment in ``directory`` (created 0700 if missing)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        outbox = cls(directory, limit=limit)
        outbox._load()
        return outbox

    def _load(self) -> None:
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # a write that never reached its rename
        numbered: list[tuple[int, Path]] = []
        for path in self.directory.iterdir():
            match = _SEGMENT.match(path.name)
            if match:
                numbered.append((int(match.group(1)), path))
        for number, path in sorted(numbered):
            self._next_segment = max(self._next_segment, number + 1)
            try:
                document = json.loads(path.read_bytes())
                records = [Record.from_json(item) for item in document["records"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                aside = path.with_name(path.name + ".corrupt")
                logger.warning("outbox segment %s is unreadable (%s); moved aside", path, exc)
                with contextlib.suppress(OSError):
                    path.replace(aside)
                continue
            self._alive[number] = set()
            self._sizes[number] = len(records)
            self._place(records, number)
        self._enforce_limit()

    def _place(self, records: Iterable[Record], segment: int) -> None:
        for record in records:
            old = self._entries.get(record.domain_id)
            if old is not None:
                self._alive[old.segment].discard(record.domain_id)
            self._order += 1
            self._entries[record.domain_id] = _Entry(record, segment, self._order)
            self._alive[segment].add(record.domain_id)

    def _enforce_limit(self) -> None:
        excess = len(self._entries) - self.limit
        if excess <= 0:
            return
        oldest = sorted(self._entries.values(), key=lambda e: e.order)[:excess]
        for entry in oldest:
            del self._entries[entry.record.domain_id]
            self._alive[entry.segment].discard(entry.record.domain_id)
        self._dirty = True
        logger.warning(
            "the outbox holds more than %d undelivered results; dropped the %d oldest "
            "(domain_id %s%s)",
            self.limit, excess, ", ".join(str(e.record.domain_id) for e in oldest[:10]),
            ", ..." if excess > 10 else "",
        )  # fmt: skip

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

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
        """Store ``records`` durably in one write; each replaces an older one of its domain."""
        if not records:
            return
        with self._lock:
            number = self._next_segment
            self._next_segment += 1
            document = {"version": _VERSION, "records": [r.to_json() for r in records]}
            data = json.dumps(document, separators=(",", ":")).encode()
            write_atomic(self.directory / f"seg-{number:012d}.json", data)
            self._alive[number] = set()
            self._sizes[number] = len(records)
            self._place(records, number)
            self._enforce_limit()
            self._dirty = True

    def done(self, record: Record) -> None:
        """The API accepted ``record`` (or refused it for good): forget it."""
        with self._lock:
            entry = self._entries.get(record.domain_id)
            if entry is not None and entry.record is record:
                del self._entries[record.domain_id]
                self._alive[entry.segment].discard(record.domain_id)
                self._dirty = True

    def commit(self) -> None:
        """Delete segments with nothing pending; cheap, call it as often as convenient."""
        with self._lock:
            if not self._dirty:
                return
            emptied = [n for n, alive in self._alive.items() if not alive]
            for number in emptied:
                del self._alive[number]
                self._sizes.pop(number, None)
                (self.directory / f"seg-{number:012d}.json").unlink(missing_ok=True)
            if emptied:
                fsync_dir(self.directory)
            self._dirty = False

    def close(self) -> None:
        """Compact: everything pending into one new segment, then remove the rest."""
        self.commit()
        with self._lock:
            if len(self._alive) <= 1 and all(
                len(alive) == self._sizes[n] for n, alive in self._alive.items()
            ):
                return  # already one segment holding nothing but pending records
            records = [e.record for e in sorted(self._entries.values(), key=lambda e: e.order)]
            old = list(self._alive)
            self._alive.clear()
            self._entries.clear()
            if records:
                number = self._next_segment
                self._next_segment += 1
                document = {"version": _VERSION, "records": [r.to_json() for r in records]}
                write_atomic(
                    self.directory / f"seg-{number:012d}.json",
                    json.dumps(document, separators=(",", ":")).encode(),
                )
                self._alive[number] = set()
                self._sizes[number] = len(records)
                self._place(records, number)
            for number in old:
                self._sizes.pop(number, None)
                (self.directory / f"seg-{number:012d}.json").unlink(missing_ok=True)
            fsync_dir(self.directory)
