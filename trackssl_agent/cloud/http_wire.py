"""HTTP/1.1 on the wire for the direct API transport: a kept-alive connection with its read
buffer, and a bounded reader of answers (status line, at most ``MAX_HEADERS`` header lines in
``MAX_HEAD`` bytes, a body by Content-Length, chunks or up to the end of the connection).

``http.client`` validates every header of every request again and parses every answer's
headers with the e-mail parser; a post needs neither. Pure bytes handling over a socket:
deadlines, retries and what a status means are the transport's and the client's.
"""

from __future__ import annotations

import socket
import ssl
from typing import NamedTuple

from trackssl_agent import log
from trackssl_agent.base import ascii_values


class WireError(Exception):
    """The answer is not HTTP/1.1 within the bounds; ``str()`` says how (printable)."""


class TooLarge(Exception):
    """The body is longer than the limit."""


MAX_HEAD = 256 * 1024
"""An answer's status line and headers larger than this are not the API's."""
MAX_HEADERS = 100
"""As ``http.client``: an answer with more header lines is refused."""
_RECV = 64 * 1024


class Connection:
    """One kept-alive connection to the API's host, connected on its first request.

    ``cut`` is the plain socket the watchdog shuts down at a deadline: under TLS a
    duplicate of the descriptor taken before the handshake, so that a trickled handshake
    can be cut too.
    """

    def __init__(
        self, host: str, port: int, timeout: float, context: ssl.SSLContext | None
    ) -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._context = context
        self.sock: socket.socket | None = None
        self.cut: socket.socket | None = None
        self.buffer = bytearray()
        """Bytes received and not yet read."""

    def connect(self) -> socket.socket:
        """The connected socket (TLS handshake done when the API is https)."""
        if self.sock is not None:
            return self.sock
        sock = socket.create_connection(self._address, self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._context is None:
            self.cut = self.sock = sock
            return sock
        self.cut = sock.dup()
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self._address[0])
        except BaseException:
            sock.close()
            raise
        return self.sock

    def close(self) -> None:
        sock, self.sock = self.sock, None
        cut, self.cut = self.cut, None
        if sock is not None:
            sock.close()
        if cut is not None and cut is not sock:
            cut.close()

    def fill(self) -> bool:
        """Receive once into ``buffer``; False at the end of the stream."""
        if self.sock is None:
            return False
        data = self.sock.recv(_RECV)
        self.buffer += data
        return bool(data)


class Unanswered(Exception):
    """The connection ended before any byte of an answer (a kept-alive one the server
    closed meanwhile, perhaps)."""


def read_head(conn: Connection) -> bytes:
    """The status line and headers of the next answer, through the blank line."""
    start = 0
    while True:
        end = conn.buffer.find(b"\r\n\r\n", start)
        lf_end = conn.buffer.find(b"\n\n", start)
        if end >= 0 or lf_end >= 0:
            stop = min(e + length for e, length in ((end, 4), (lf_end, 2)) if e >= 0)
            head = bytes(conn.buffer[:stop])
            del conn.buffer[:stop]
            return head
        if len(conn.buffer) > MAX_HEAD:
            raise WireError(f"the API's answer has more than {MAX_HEAD // 1024} KiB of headers")
        start = max(0, len(conn.buffer) - 3)
        if not conn.fill():
            if conn.buffer:
                raise WireError("the API closed the connection in the middle of its answer")
            raise Unanswered


class Head(NamedTuple):
    status: int
    keep_alive: bool
    """What the version and the Connection header allow (a body read to the end of the
    connection ends it anyway)."""
    fields: dict[str, str]


def parse_head(head: bytes) -> Head:
    """Status, keep-alive and header fields (names lowercased, repeats joined by ``, ``)."""
    lines = head.split(b"\n")
    first = lines[0].rstrip(b"\r")
    parts = first.split(None, 2)
    code = parts[1].decode("latin-1") if len(parts) > 1 else ""
    status = ascii_values.whole(code) if len(code) == 3 else None
    if status is None or status < 100 or not parts[0].startswith(b"HTTP/"):
        raise WireError(
            f"the API's answer is not HTTP: {log.excerpt(first.decode('latin-1'), 100)!r}"
        )
    fields: dict[str, str] = {}
    name = ""
    count = 0
    for raw in lines[1:]:
        line = raw.rstrip(b"\r").decode("latin-1")
        if not line:
            continue
        if line[0] in " \t" and name:  # an obsolete folded continuation of the last field
            fields[name] = f"{fields[name]} {line.strip()}"
            continue
        count += 1
        if count > MAX_HEADERS:
            raise WireError(f"the API's answer has more than {MAX_HEADERS} headers")
        key, colon, value = line.partition(":")
        if not colon:
            continue  # not a field; http.client's parser skips it too
        name = key.strip().lower()
        value = value.strip()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    connection = fields.get("connection", "").lower()
    if parts[0] == b"HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection
    return Head(status, keep_alive, fields)


def _exact(conn: Connection, size: int) -> bytes:
    """The next ``size`` bytes of the answer."""
    while len(conn.buffer) < size:
        if not conn.fill():
            raise WireError("the API closed the connection in the middle of its answer")
    data = bytes(conn.buffer[:size])
    del conn.buffer[:size]
    return data


def _line(conn: Connection) -> bytes:
    """The next line of a chunked body (a size or a trailer), without its end."""
    while (end := conn.buffer.find(b"\n")) < 0:
        if len(conn.buffer) > MAX_HEAD:
            raise WireError("the API's chunked answer has an overlong line")
        if not conn.fill():
            raise WireError("the API closed the connection in the middle of its answer")
    line = bytes(conn.buffer[:end]).rstrip(b"\r")
    del conn.buffer[: end + 1]
    return line


def _chunked(conn: Connection, limit: int) -> bytes:
    """A chunked body (RFC 9112 7.1); TooLarge past ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        text = _line(conn).split(b";", 1)[0].strip().decode("latin-1")
        length = int(text, 16) if text and all(c in _HEX for c in text) else None
        if length is None:
            raise WireError("the API's chunked answer has a bad chunk size")
        if length == 0:
            while _line(conn):  # trailer fields, then the blank line
                pass
            return b"".join(parts)
        size += length
        if size > limit:
            raise TooLarge
        parts.append(_exact(conn, length))
        _exact(conn, 2)  # the CRLF after the chunk


_HEX = frozenset("0123456789abcdefABCDEF")


def _to_end(conn: Connection, limit: int) -> bytes:
    """The body up to the end of the connection; TooLarge past ``limit`` bytes."""
    while len(conn.buffer) <= limit and conn.fill():
        pass
    if len(conn.buffer) > limit:
        raise TooLarge
    data = bytes(conn.buffer)
    conn.buffer.clear()
    return data


def read_body(conn: Connection, head: Head, method: str, limit: int) -> tuple[bytes, bool]:
    """The body of the answer ``head`` begins, and whether the connection may be reused;
    TooLarge past ``limit`` bytes (before reading any of it when the length is declared)."""
    fields, keep = head.fields, head.keep_alive
    declared = ascii_values.whole(fields.get("content-length", ""), cap=limit + 1)
    if method == "HEAD" or head.status in (204, 304):
        return b"", keep
    if "chunked" in fields.get("transfer-encoding", "").lower():
        return _chunked(conn, limit), keep
    if declared is not None:
        if declared > limit:
            raise TooLarge
        return _exact(conn, declared), keep
    return _to_end(conn, limit), False
