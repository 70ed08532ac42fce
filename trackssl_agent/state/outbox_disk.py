"""The outbox's segment files in their folder: named, written atomically, read within a
byte budget, moved aside and deleted, never following anything planted there.

A segment is written to a temporary file, flushed, fsynced, renamed into place and the
folder fsynced, so a crash or power loss leaves it whole or absent. What a segment's bytes
mean is ``outbox_format``; which records are still pending is ``outbox``.

Names: ``seg-<n>.json``, read back for any number of ASCII digits, in number order. The
agent writes numbers up to ``MAX_NUMBER`` only (12 to 18 digits), so every name it makes is
one it reads again. A segment numbered at or past ``MAX_NUMBER`` (planted, or left by a
version that counted on) would leave no number for the next one: the load then renumbers the
segments 1, 2, ... in their order, one rename at a time, so the order holds at every step.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterable

from trackssl_agent import log
from trackssl_agent.state.outbox_format import Loaded, Record, encode, parse_segment
from trackssl_agent.state.statedir import Folder

# The outbox's own logger name, so its warnings read (and filter) as they always did.
logger = log.get_logger("trackssl_agent.state.outbox")

# ``[0-9]``, not ``\d``: only ASCII digits, which ``int`` and the sort agree on.
_SEGMENT = re.compile(r"seg-([0-9]+)\.json")
_TEMPORARY = re.compile(r"\.seg-[0-9]+\.json\.tmp")
MAX_NUMBER = 10**18 - 1
"""The highest segment number the agent writes: 10**18 segments is more than any agent makes
(one a second for 30 billion years), and 18 digits stay far inside what a name may hold."""
_NAME_TRIES = 1000
"""Segment numbers tried before a write gives up: each taken one is something left alone."""

DEFERRED = Loaded()
"""``SegmentFiles.read``'s answer for a segment left for a later load."""


def _segment_name(number: int) -> str:
    return f"seg-{number:012d}.json"


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
        never reached its rename is deleted on the way, and segments numbered up to the
        limit are renumbered (see the module docstring); anything else is left alone."""
        numbered: list[tuple[int, str]] = []
        for name in self.folder.names():
            if tidy and _TEMPORARY.fullmatch(name) and self._is_file(name):
                with contextlib.suppress(OSError):
                    self.folder.unlink(name)
            elif match := _SEGMENT.fullmatch(name):
                numbered.append((int(match.group(1)), name))
        numbered.sort()
        if tidy and numbered and numbered[-1][0] >= MAX_NUMBER:
            numbered = self._renumber(numbered)
        if numbered:
            self._next_number = max(self._next_number, numbered[-1][0] + 1)
        return [name for _number, name in numbered]

    def others(self) -> list[str]:
        """Entries the loader does not read: neither a segment nor a temporary of ours
        (segments moved aside as ``*.corrupt``, files someone put there), sorted."""
        return sorted(
            name
            for name in self.folder.names()
            if not (_SEGMENT.fullmatch(name) or _TEMPORARY.fullmatch(name))
        )

    def _renumber(self, numbered: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Rename the segments, in order, to the numbers 1, 2, ...

        The segment of rank r carries a number of at least r, so each rename goes down to a
        name no later segment holds, and the order is the same after every single rename: a
        crash half-way leaves an outbox that loads as before. Only two spellings of one
        number (``seg-7.json`` and ``seg-007.json``) or a ``seg-0.json`` can be in the way;
        then the rest keep their names and the next write says the numbers ran out.
        """
        done: list[tuple[int, str]] = []
        for rank, (_number, name) in enumerate(numbered, start=1):
            target = _segment_name(rank)
            try:
                if target != name:
                    if self.folder.exists(target):
                        raise FileExistsError(errno.EEXIST, "in the way", target)
                    self.folder.rename(name, target)
            except OSError as exc:
                logger.warning(
                    "outbox segment %s could not be renumbered (%s); it and later ones keep "
                    "their numbers", name, exc.strerror or exc,
                )  # fmt: skip
                return done + numbered[rank - 1 :]
            done.append((rank, target))
        with contextlib.suppress(OSError):
            self.folder.fsync()
        logger.info(
            "renumbered the %d outbox segment(s) from 1: the highest number had reached %d",
            len(done), MAX_NUMBER,
        )  # fmt: skip
        return done

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
            if number > MAX_NUMBER:
                # Never a name past the limit: only a segment that could not be renumbered
                # leads here, and the outbox then says once why it keeps results in memory.
                raise OSError(
                    errno.EOVERFLOW,
                    f"its segment numbers ran out at {MAX_NUMBER}; move the seg-*.json files "
                    "with the longest names out of it",
                )
            self._next_number += 1
            name = _segment_name(number)
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
