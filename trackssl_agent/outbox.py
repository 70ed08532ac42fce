"""The outbox: a write-ahead store of results not yet accepted by the API, in the state dir.

A result is written before its post is attempted and leaves once the API accepted it, so
delivery is at-least-once: a crash can cause a result to be posted twice, never lost.

On disk it is a folder of segment files ``seg-<n>.json``, each holding one batch of
records and each written atomically (temporary file, fsync, rename, fsync of the folder),
so a crash or power loss leaves every segment whole or absent. A segment is a header line
and then one JSON record per line, so one bad record costs only itself; segments of
version 1 (one JSON document) are still read. Delivered records are forgotten in memory; a
segment is deleted once none of its records is still pending, and ``close()`` compacts
what is left into one segment. When several segments name the same ``domain_id`` the
newest wins.

Loading never raises on content: a segment with unreadable records (nesting, size, wrong
types, any bytes) keeps its readable ones in a new segment and is moved aside as
``*.corrupt`` with one warning, and a load reads a bounded number of bytes. Files the
agent did not make (links, odd names, anything not a plain file) are left alone. When a
write fails (disk full, read-only), the outbox keeps the rest of the cycle in memory and
says so once: ``problem`` is then set and the cycle posts directly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackssl_agent import log
from trackssl_agent.statedir import Folder, explain, open_folder

logger = log.get_logger(__name__)

DEFAULT_LIMIT = 10_000
MAX_RECORD_BYTES = 4 << 20
"""A record line longer than this is unreadable: a payload holds one chain, which
OpenSSL caps at 100 KiB of DER by default."""
MAX_LOAD_BYTES = 256 << 20
"""What one load reads at most; segments past it wait for a later load."""
_SEGMENT = re.compile(r"seg-([0-9]{1,60})\.json")
_TEMPORARY = re.compile(r"\.seg-[0-9]{1,60}\.json\.tmp")
_VERSION = 2
_MAX_ID = (1 << 63) - 1
_WARNINGS = 10
"""Damaged segments named one by one; the rest are counted in one more line."""


class JsonBytes(Mapping[str, Any]):
    """A JSON object kept as the bytes ``json.dumps`` made of it: the post body the cycle
    built once, posted and stored as it is. Reading it as a mapping parses it each time
    (only tests and rare paths do)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def _value(self) -> dict[str, Any]:
        value = json.loads(self.raw)
        return value if isinstance(value, dict) else {}

    def __getitem__(self, key: str) -> Any:
        return self._value()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._value())

    def __len__(self) -> int:
        return len(self._value())


@dataclass(frozen=True)
class Record:
    """One undelivered result: the post body of SPEC section 5 and when it was queued."""

    domain_id: int
    payload: Mapping[str, Any]
    """The post body: ``JsonBytes`` as the cycle built it, or what a segment held."""
    queued_at: str

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {"domain_id": self.domain_id, "queued_at": self.queued_at, "payload": self.payload}

    def data(self) -> bytes:
        """The post body's bytes."""
        if isinstance(self.payload, JsonBytes):
            return self.payload.raw
        return json.dumps(self.payload, separators=(",", ":")).encode()

    def line(self) -> bytes:
        """The stored form as one line of a segment (no newline)."""
        if isinstance(self.payload, JsonBytes):
            # Bytes from json.dumps: ASCII without a raw newline, so one line as they are.
            return b'{"domain_id":%d,"queued_at":%b,"payload":%b}' % (
                self.domain_id, json.dumps(self.queued_at).encode(), self.payload.raw,
            )  # fmt: skip
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @staticmethod
    def from_json(value: Any) -> Record:
        """Parse the stored form; ValueError when it is not one."""
        if not isinstance(value, dict):
            raise ValueError("a record is not an object")
        domain_id, payload = value.get("domain_id"), value.get("payload")
        if type(domain_id) is not int or not 0 <= domain_id <= _MAX_ID:
            raise ValueError("a record lacks a valid domain_id")
        if not isinstance(payload, dict):
            raise ValueError("a record lacks its payload")
        queued_at = value.get("queued_at", "")
        return Record(domain_id, payload, queued_at if isinstance(queued_at, str) else "")


def encode(records: Iterable[Record]) -> bytes:
    """A segment's bytes: a header line, then one record per line (JSON escapes newlines)."""
    lines = [json.dumps({"version": _VERSION}, separators=(",", ":")).encode()]
    lines.extend(r.line() for r in records)
    return b"\n".join(lines) + b"\n"


@dataclass
class Loaded:
    """What could be read from one segment."""

    records: deque[Record] = field(default_factory=deque)
    bad: int = 0
    """Records (or lines) that could not be read."""
    reason: str = ""
    """Why the first bad one was bad."""
    size: int = 0
    """Bytes read."""

    def reject(self, reason: str) -> None:
        """Count one unreadable record."""
        self.bad += 1
        self.reason = self.reason or reason


def _parse_line(line: bytes, into: Loaded) -> None:
    if not line.strip():
        return
    try:
        value = json.loads(line)
    except RecursionError:
        into.reject("nested too deeply")
        return
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        into.reject(f"not JSON: {str(exc)[:80]}")
        return
    if isinstance(value, dict) and "domain_id" not in value and "version" in value:
        items = value.get("records")
        if items is None:
            return  # the header line of version 2
        if not isinstance(items, list):
            into.reject("records is not a list")
            return
        for item in items:  # version 1: every record in one document
            _parse_record(item, into)
        return
    _parse_record(value, into)


def _parse_record(value: Any, into: Loaded) -> None:
    try:
        into.records.append(Record.from_json(value))
    except ValueError as exc:
        into.reject(str(exc))


def parse_segment(
    stream: io.BufferedReader[Any], *, budget: int, keep: int = DEFAULT_LIMIT
) -> Loaded:
    """Read the records of one segment from ``stream``: at most ``budget`` bytes, and the
    last ``keep`` records (later ones are newer); never raises on content."""
    loaded = Loaded(records=deque(maxlen=keep))
    if stream.peek(16)[:13] == b'{"version":1,':
        # Version 1 is one document on one line: read it whole, within the budget.
        data = stream.read(budget)
        _parse_line(data, loaded)
        if stream.read(1):
            loaded.reject(f"the segment is larger than {budget} bytes")
        loaded.size = len(data)
        return loaded
    used = 0
    while True:
        line = stream.readline(min(MAX_RECORD_BYTES + 1, budget - used)) if used < budget else b""
        if not line:
            if used >= budget and stream.read(1):
                loaded.reject(f"the segment is larger than {budget} bytes")
            loaded.size = used
            return loaded
        used += len(line)
        whole = line.endswith(b"\n") or (
            len(line) <= MAX_RECORD_BYTES and (used < budget or not stream.peek(1))
        )
        if whole:
            _parse_line(line, loaded)
            continue
        loaded.reject(f"a record is longer than {MAX_RECORD_BYTES} bytes")
        while not line.endswith(b"\n") and used < budget:  # skip the rest of it, unread
            line = stream.readline(min(1 << 16, budget - used))
            if not line:
                break
            used += len(line)


_DEFERRED = Loaded()
"""``_read``'s answer for a segment left for a later load."""


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


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    with open_folder(path.parent) as folder:
        _write_in(folder, path.name, data)


def _write_in(folder: Folder, name: str, data: bytes) -> None:
    """Write ``name`` in ``folder`` atomically; FileExistsError when a temporary of that
    name is in the way (a leftover, or something planted: neither is touched)."""
    tmp = f".{name}.tmp"
    fd = folder.create(tmp)
    try:
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            folder.unlink(tmp)  # ours: made exclusively just now
        raise
    os.close(fd)
    folder.rename(tmp, name)
    folder.fsync()


class Outbox:
    """Pending results by ``domain_id``; thread-safe. Open with ``Outbox.open``."""

    def __init__(
        self, folder: Folder | None, *, limit: int = DEFAULT_LIMIT, problem: str | None = None
    ) -> None:
        self.folder = folder
        self.directory = folder.path if folder is not None else None
        self.limit = limit
        self.problem = problem
        """Why results are not stored (said once when it happened), or None."""
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._segments: dict[int, _Segment] = {}
        self._next_id = 1
        self._next_number = 1
        """The number of the next segment file."""
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
        outbox = cls(folder, limit=limit)
        try:
            outbox._load(folder)
        except BaseException:
            folder.close()
            raise
        return outbox

    @classmethod
    def in_memory(cls, problem: str, *, limit: int = DEFAULT_LIMIT) -> Outbox:
        """An outbox that stores nothing: the state dir could not be used (``problem``)."""
        return cls(None, limit=limit, problem=problem)

    def _load(self, folder: Folder) -> None:
        numbered: list[tuple[int, str]] = []
        for name in folder.names():
            if _TEMPORARY.fullmatch(name) and self._is_file(name):
                with contextlib.suppress(OSError):
                    folder.unlink(name)  # a write of ours that never reached its rename
            elif match := _SEGMENT.fullmatch(name):
                number = int(match.group(1))
                numbered.append((number, name))
                self._next_number = max(self._next_number, number + 1)
        damaged: list[tuple[int, str, Loaded]] = []
        budget = MAX_LOAD_BYTES
        deferred = dropped = 0
        for _number, name in sorted(numbered):
            loaded = self._read(folder, name, budget, may_defer=bool(self._segments))
            if loaded is _DEFERRED:
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
            self._set_aside(seg_id, name, loaded, quiet=index >= _WARNINGS)
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

    def _is_file(self, name: str) -> bool:
        assert self.folder is not None
        try:
            return stat.S_ISREG(self.folder.lstat(name).st_mode)
        except OSError:
            return False

    def _read(self, folder: Folder, name: str, budget: int, *, may_defer: bool) -> Loaded | None:
        """One segment; None when it is left alone (not a plain file, unreadable),
        ``_DEFERRED`` when (``may_defer``) it is larger than what is left of the budget."""
        if budget <= 0 and may_defer:
            return _DEFERRED
        try:
            fd = folder.open(name, os.O_RDONLY)
        except OSError as exc:
            logger.warning("outbox segment %s cannot be read (%s); left alone", name, exc)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                logger.warning("%s in the outbox is not a file; left alone", name)
                return None
            if may_defer and st.st_size > budget:
                return _DEFERRED
            with os.fdopen(fd, "rb", closefd=False) as stream:
                return parse_segment(stream, budget=budget, keep=self.limit)
        except OSError as exc:
            logger.warning("outbox segment %s cannot be read (%s); left alone", name, exc)
            return None
        finally:
            os.close(fd)

    def _set_aside(self, seg_id: int, name: str, loaded: Loaded, *, quiet: bool) -> None:
        """Keep the readable records of a damaged segment in a new one, then move it aside."""
        assert self.folder is not None
        segment = self._segments[seg_id]
        kept = [self._entries[d].record for d in self._ordered(segment.alive)]
        if kept and not self._store(kept, seg_id):
            return  # not durable elsewhere yet: the damaged file stays where it is
        aside = self._free_name(f"{name}.corrupt")
        try:
            self.folder.rename(name, aside)
            self.folder.fsync()
        except OSError as exc:
            aside = f"{name} (could not move it aside: {exc.strerror})"
        if not kept:
            self._segments.pop(seg_id, None)
        if not quiet:
            logger.warning(
                "outbox segment %s: %d record(s) unreadable (%s); kept %d, moved it to %s",
                self.folder.path / name, loaded.bad, loaded.reason, len(kept), aside,
            )  # fmt: skip

    def _free_name(self, name: str) -> str:
        assert self.folder is not None
        candidate, n = name, 1
        while self.folder.exists(candidate):
            n += 1
            candidate = f"{name}-{n}"
        return candidate

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
        if self.folder is None or (self.problem is not None and not again):
            return None
        data = encode(records)
        try:
            for _ in range(1000):
                number = self._next_number
                self._next_number += 1
                name = f"seg-{number:012d}.json"
                if self.folder.exists(name):
                    continue  # something we left alone has that name
                try:
                    _write_in(self.folder, name, data)
                except FileExistsError:
                    continue
                return name
            raise FileExistsError(17, "no free segment name", str(self.folder.path))
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
        removed = False
        for seg_id in seg_ids:
            name = self._segments.pop(seg_id).name
            if name is None or self.folder is None:
                continue
            try:
                self.folder.unlink(name)
                removed = True
            except OSError as exc:
                # Left on disk, its records are re-sent next cycle: at-least-once holds.
                logger.debug("could not delete outbox segment %s: %s", name, exc)
        if removed and self.folder is not None:
            with contextlib.suppress(OSError):
                self.folder.fsync()

    def close(self) -> None:
        """Compact: everything pending into one new segment, then remove the rest; then
        release the folder. Records still only in memory are written here if the state dir
        allows it now."""
        self.commit()
        with self._lock:
            try:
                self._compact()
            finally:
                if self.folder is not None:
                    self.folder.close()

    def _compact(self) -> None:
        segments = list(self._segments.values())
        if self.folder is None or (
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
