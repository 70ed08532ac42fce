"""The outbox's segment files in their folder: named, written atomically, read within a
byte budget, moved aside and deleted, never following anything planted there.

A segment is written to a temporary file, flushed, fsynced, renamed into place and the
folder fsynced, so a crash or power loss leaves it whole or absent. What a segment's bytes
mean is ``outbox_format``; which records are still pending is ``outbox``.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterable

from trackssl_agent import log
from trackssl_agent.outbox_format import Loaded, Record, encode, parse_segment
from trackssl_agent.statedir import Folder

# The outbox's own logger name, so its warnings read (and filter) as they always did.
logger = log.get_logger("trackssl_agent.outbox")

_SEGMENT = re.compile(r"seg-([0-9]{1,60})\.json")
_TEMPORARY = re.compile(r"\.seg-[0-9]{1,60}\.json\.tmp")
_NAME_TRIES = 1000
"""Segment numbers tried before a write gives up: each taken one is something left alone."""

DEFERRED = Loaded()
"""``SegmentFiles.read``'s answer for a segment left for a later load."""


def _write_in(folder: Folder, name: str, data: bytes, fsync: Callable[[int], None]) -> None:
    """Write ``name`` in ``folder`` atomically; FileExistsError when a temporary of that
    name is in the way (a leftover, or something planted: neither is touched)."""
    tmp = f".{name}.tmp"
    fd = folder.create(tmp)
    try:
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            folder.unlink(tmp)  # ours: made exclusively just now
        raise
    os.close(fd)
    folder.rename(tmp, name)
    folder.fsync()


class SegmentFiles:
    """The segment files of one opened outbox folder, which it owns until ``close``."""

    def __init__(self, folder: Folder, *, fsync: Callable[[int], None] = os.fsync) -> None:
        self.folder = folder
        self._fsync = fsync
        """Makes a written file durable: ``os.fsync``; a test passes one that records the
        order of the steps (the folder's own steps go through ``folder``)."""
        self._next_number = 1
        """The number of the next segment file."""

    def scan(self, *, tidy: bool = True) -> list[str]:
        """The segment names, oldest first. With ``tidy``, a temporary file of ours that
        never reached its rename is deleted on the way; anything else is left alone."""
        numbered: list[tuple[int, str]] = []
        for name in self.folder.names():
            if tidy and _TEMPORARY.fullmatch(name) and self._is_file(name):
                with contextlib.suppress(OSError):
                    self.folder.unlink(name)
            elif match := _SEGMENT.fullmatch(name):
                number = int(match.group(1))
                numbered.append((number, name))
                self._next_number = max(self._next_number, number + 1)
        return [name for _number, name in sorted(numbered)]

    def _is_file(self, name: str) -> bool:
        try:
            return stat.S_ISREG(self.folder.lstat(name).st_mode)
        except OSError:
            return False

    def read(self, name: str, budget: int, *, may_defer: bool, keep: int) -> Loaded | None:
        """One segment, its last ``keep`` records; None when it is left alone (not a plain
        file, unreadable), ``DEFERRED`` when (``may_defer``) it is larger than ``budget``."""
        if budget <= 0 and may_defer:
            return DEFERRED
        try:
            fd = self.folder.open(name, os.O_RDONLY)
        except OSError as exc:
            logger.warning("outbox segment %s cannot be read (%s); left alone", name, exc)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                logger.warning("%s in the outbox is not a file; left alone", name)
                return None
            if may_defer and st.st_size > budget:
                return DEFERRED
            with os.fdopen(fd, "rb", closefd=False) as stream:
                return parse_segment(stream, budget=budget, keep=keep)
        except OSError as exc:
            logger.warning("outbox segment %s cannot be read (%s); left alone", name, exc)
            return None
        finally:
            os.close(fd)

    def write(self, records: list[Record]) -> str:
        """A new segment file holding ``records`` (one write, one fsync); its name.
        OSError when it cannot be written."""
        data = encode(records)
        for _ in range(_NAME_TRIES):
            number = self._next_number
            self._next_number += 1
            name = f"seg-{number:012d}.json"
            if self.folder.exists(name):
                continue  # something we left alone has that name
            try:
                _write_in(self.folder, name, data, self._fsync)
            except FileExistsError:
                continue
            return name
        raise FileExistsError(17, "no free segment name", str(self.folder.path))

    def move_aside(self, name: str) -> str:
        """Rename a damaged segment to a free ``<name>.corrupt`` name; where it went, or
        why it stayed, for the warning that names it."""
        aside = self._free_name(f"{name}.corrupt")
        try:
            self.folder.rename(name, aside)
            self.folder.fsync()
        except OSError as exc:
            return f"{name} (could not move it aside: {exc.strerror})"
        return aside

    def _free_name(self, name: str) -> str:
        candidate, n = name, 1
        while self.folder.exists(candidate):
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def remove(self, names: Iterable[str]) -> None:
        """Delete segment files, then make that durable with one fsync of the folder."""
        removed = False
        for name in names:
            try:
                self.folder.unlink(name)
                removed = True
            except OSError as exc:
                # Left on disk, its records are re-sent next cycle: at-least-once holds.
                logger.debug("could not delete outbox segment %s: %s", name, exc)
        if removed:
            with contextlib.suppress(OSError):
                self.folder.fsync()

    def close(self) -> None:
        """Release the folder."""
        self.folder.close()
