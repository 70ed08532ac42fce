"""The outbox's on-disk record format: a record as one JSON line, a segment as a header line
and then one record per line, and the bounded, never-raising reading of a segment back.

Pure: it sees bytes and a stream it is handed, never a file name. Where the files live and
how they are written is ``outbox_disk``; which records are pending is ``outbox``.
"""

from __future__ import annotations

import io
import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LIMIT = 10_000
"""How many pending records the outbox holds at most (and one segment read keeps)."""
MAX_RECORD_BYTES = 4 << 20
"""A record line longer than this is unreadable: a payload holds one chain, which
OpenSSL caps at 100 KiB of DER by default."""
_VERSION = 2
_VERSION_1_START = b'{"version":1,'
"""How a segment of version 1 (every record in one JSON document) begins."""
_MAX_ID = (1 << 63) - 1


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
    """One undelivered result: the post body of SPEC section 5 for one domain."""

    domain_id: int
    payload: Mapping[str, Any]
    """The post body: ``JsonBytes`` as the cycle built it, or what a segment held."""

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {"domain_id": self.domain_id, "payload": self.payload}

    def data(self) -> bytes:
        """The post body's bytes."""
        if isinstance(self.payload, JsonBytes):
            return self.payload.raw
        return json.dumps(self.payload, separators=(",", ":")).encode()

    def line(self) -> bytes:
        """The stored form as one line of a segment (no newline)."""
        if isinstance(self.payload, JsonBytes):
            # Bytes from json.dumps: ASCII without a raw newline, so one line as they are.
            return b'{"domain_id":%d,"payload":%b}' % (self.domain_id, self.payload.raw)
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @staticmethod
    def from_json(value: Any) -> Record:
        """Parse the stored form; ValueError when it is not one.

        Other keys are ignored: records written by earlier versions also hold a
        ``queued_at`` time, which nothing ever read."""
        if not isinstance(value, dict):
            raise ValueError("a record is not an object")
        domain_id, payload = value.get("domain_id"), value.get("payload")
        if type(domain_id) is not int or not 0 <= domain_id <= _MAX_ID:
            raise ValueError("a record lacks a valid domain_id")
        if not isinstance(payload, dict):
            raise ValueError("a record lacks its payload")
        return Record(domain_id, payload)


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
    if stream.peek(16)[: len(_VERSION_1_START)] == _VERSION_1_START:
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
