"""One connection under one deadline: the byte pipe that STARTTLS dialogues and TLS share."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Protocol as TypingProtocol

MAX_LINE = 16 * 1024
"""A greeting or reply line longer than this is not a real server's."""

RECV_SIZE = 64 * 1024


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
    """A connected socket plus a read buffer; every call re-arms the timeout to the deadline.

    Plain ``recv`` loops would re-arm a fixed timeout per call, so a server that trickles
    one byte per second would never time out; here each call gets only what is left.
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline
        self._buffer = bytearray()

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

    def recv(self) -> bytes:
        """Return buffered bytes if any, else the next bytes from the peer (b"" at EOF)."""
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        self.sock.settimeout(self.deadline.remaining())
        return self.sock.recv(RECV_SIZE)

    def read_line(self) -> bytes:
        """Return one line including its ``\\n``; DialogueError at EOF or on an endless line."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > MAX_LINE:
                raise DialogueError("the server sent an overlong line")
            if not self._fill():
                raise DialogueError(_closed_message(self._buffer))

    def read_exact(self, size: int) -> bytes:
        """Return exactly ``size`` bytes; DialogueError if the server closes first."""
        while len(self._buffer) < size:
            if not self._fill():
                raise DialogueError(_closed_message(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_until(self, marker: bytes, limit: int = MAX_LINE) -> bytes:
        """Return everything up to and including ``marker``."""
        while True:
            end = self._buffer.find(marker)
            if end >= 0:
                data = bytes(self._buffer[: end + len(marker)])
                del self._buffer[: end + len(marker)]
                return data
            if len(self._buffer) > limit:
                raise DialogueError("the server sent more than expected without the marker")
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
    """The server's own words for a message: decoded leniently, control characters dropped."""
    text = data.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")
