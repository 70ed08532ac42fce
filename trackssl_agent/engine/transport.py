"""One connection under one deadline: the byte pipe that STARTTLS dialogues and TLS share."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Protocol as TypingProtocol

MAX_LINE = 16 * 1024
"""A greeting or reply line longer than this is not a real server's."""

RECV_SIZE = 64 * 1024

MAX_DIALOGUE = 256 * 1024
"""What one STARTTLS dialogue may read in all; a real one reads a few KiB."""

ITEM_COST = 32
"""Each line or field a dialogue reads is charged this much on top of its bytes: the work
per line does not shrink with its length, so a flood of empty lines must run out too."""


class DialogueError(Exception):
    """The server refused, did not offer, or garbled STARTTLS; ``str()`` has its own words."""


class Deadline:
    """One absolute deadline on a monotonic clock; every blocking step asks it for time left."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.seconds = seconds
        self.expires = clock() + seconds

    def remaining(self) -> float:
        """Seconds left; raises TimeoutError once the deadline has passed."""
        left = self.expires - self._clock()
        if left <= 0:
            raise TimeoutError(f"no answer within the {self.seconds:g} s deadline")
        return left


class RecordIO(TypingProtocol):
    """What the TLS handshake needs from the layer below: send bytes, receive bytes."""

    def send(self, data: bytes) -> None:
        """Send all of ``data`` before the deadline."""

    def recv(self) -> bytes:
        """Return the next bytes from the peer, or b"" when it closed."""


class Conn:
    """A connected socket plus a read buffer, under one deadline and one byte budget.

    Plain ``recv`` loops would re-arm a fixed timeout per call, so a server that trickles
    one byte per second would never time out; here each call gets only what is left, and
    every read checks the deadline first, even when the buffer already holds the answer:
    a server that floods lines faster than they are handled must not outlast it either.
    The dialogue reads (lines, markers, fixed sizes) draw on one budget of ``MAX_DIALOGUE``,
    counted as they are taken, so nothing collected is ever measured twice.
    """

    def __init__(self, sock: socket.socket, deadline: Deadline, budget: int = MAX_DIALOGUE) -> None:
        self.sock = sock
        self.deadline = deadline
        self._buffer = bytearray()
        self._budget = budget
        self._limit = budget

    def send(self, data: bytes) -> None:
        """Send all of ``data`` before the deadline."""
        self.sock.settimeout(self.deadline.remaining())
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read once into the buffer; False at end of stream."""
        self.sock.settimeout(self.deadline.remaining())
        data = self.sock.recv(RECV_SIZE)
        if not data:
            return False
        self._buffer += data
        return True

    def _take(self, size: int) -> bytes:
        """Remove and return the first ``size`` buffered bytes, charged to the budget."""
        self._budget -= size + ITEM_COST
        if self._budget < 0:
            raise DialogueError(
                f"the server sent more than {self._limit // 1024} KiB without finishing "
                "the dialogue"
            )
        data = bytes(self._buffer[:size])
        del self._buffer[:size]  # O(1) for a bytearray's front: it only moves its start
        return data

    def recv(self) -> bytes:
        """Return buffered bytes if any, else the next bytes from the peer (b"" at EOF)."""
        self.deadline.remaining()
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        self.sock.settimeout(self.deadline.remaining())
        return self.sock.recv(RECV_SIZE)

    def read_line(self) -> bytes:
        """Return one line including its ``\\n``; DialogueError at EOF or on an endless line."""
        return self.read_until(b"\n", limit=MAX_LINE, overlong="the server sent an overlong line")

    def read_exact(self, size: int) -> bytes:
        """Return exactly ``size`` bytes; DialogueError if the server closes first."""
        self.deadline.remaining()
        while len(self._buffer) < size:
            if not self._fill():
                raise DialogueError(_closed_message(self._buffer))
        return self._take(size)

    def read_until(
        self,
        marker: bytes,
        limit: int = MAX_LINE,
        overlong: str = "the server sent more than expected without the marker",
    ) -> bytes:
        """Return everything up to and including ``marker``.

        Each byte is searched once: after a refill the search resumes where it stopped.
        A marker further than ``limit`` bytes away counts as missing.
        """
        self.deadline.remaining()
        start = 0
        while True:
            end = self._buffer.find(marker, start, limit + len(marker))
            if end >= 0:
                return self._take(end + len(marker))
            if len(self._buffer) > limit:
                raise DialogueError(overlong)
            start = max(0, len(self._buffer) - len(marker) + 1)
            if not self._fill():
                raise DialogueError(_closed_message(self._buffer))

    def pending(self) -> bytes:
        """Bytes received but not consumed: must be empty when TLS starts."""
        return bytes(self._buffer)


def _closed_message(partial: bytes | bytearray) -> str:
    if partial:
        return f"the server closed the connection after {printable(bytes(partial))!r}"
    return "the server closed the connection"


def printable(data: bytes, limit: int = 200) -> str:
    """The server's own words for a message: decoded leniently, control characters dropped.

    Only the first bytes are looked at: a message never shows more, and a flood must not
    cost time here either.
    """
    text = data[: limit * 8].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")
