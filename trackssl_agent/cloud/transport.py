"""How requests reach the API when no proxy applies: kept-alive HTTP/1.1 connections,
each attempt cut at its own absolute deadline. It moves bytes; retries, the schema and
what a status means are ``api``'s.

``requests`` rebuilds headers, re-parses the URL and merges environment settings on every
call, and costs a tenth of a second to import; a post needs none of that. ``http.client``
validates every header of every request again and parses every answer's headers with the
e-mail parser: a third of a post's CPU on a busy cycle. Here a request is one ``sendall``
of a head built once per path plus the body, and an answer is read by a small bounded
parser (status line, at most ``MAX_HEADERS`` header lines, a body by Content-Length,
chunks or up to the end of the connection). One watchdog
thread serves every connection (a timer per request would cost a thread each): at a
request's deadline it shuts the connection's socket down, which ends a read blocked on a
server that trickles (each byte inside the read timeout), whether it waits for the TLS
handshake, the headers or the body. Through a proxy, ``cloud.session`` does the work.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from trackssl_agent import log
from trackssl_agent.base import ascii_values
from trackssl_agent.cloud import failures
from trackssl_agent.errors import ApiError
from trackssl_agent.errors import ResponseError as ResponseError  # noqa: PLC0414 - re-exported

_TICK = 0.1
"""How often the watchdog looks: a deadline is kept to within this."""


class AttemptFailed(Exception):
    """One attempt got no usable answer (connection, timeout, deadline): worth a retry."""

    def __init__(self, problem: str, advice: str = "") -> None:
        super().__init__(problem)
        self.advice = advice
        """What to do if retrying does not help, for the message that gives up."""


class Answer(NamedTuple):
    """What one attempt got back: the status, the whole body, and its headers."""

    status: int
    body: bytes
    header: Callable[[str], str | None]
    """A header's value by name (case-insensitive), or None."""


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The OS trust store, plus the extra CAs of ``ca_bundle``; hostname checked."""
    import truststore  # noqa: PLC0415 - only an https API needs it

    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ApiError(f"TRACKSSL_CA_BUNDLE {ca_bundle}: cannot load it: {exc}") from None
    return context


def tls_failure(url: str, reason: str) -> str:
    """The message for an API whose certificate did not verify."""
    return (
        f"TLS verification of {url} failed ({reason}); if a TLS-inspecting proxy sits in "
        "between, install its CA in the system store or set TRACKSSL_CA_BUNDLE"
    )


def too_large(what: str, limit: int) -> ResponseError:
    """The error for an answer over ``limit`` bytes."""
    return ResponseError(
        f"the API's answer to the {what} is larger than {limit // 1024 // 1024} MiB; "
        "is TRACKSSL_URL right?"
    )


def declared_too_large(declared: str | None, limit: int) -> bool:
    """True when a Content-Length header announces more than ``limit`` bytes."""
    size = ascii_values.whole(declared or "", cap=limit + 1)
    return size is not None and size > limit


MAX_HEAD = 256 * 1024
"""An answer's status line and headers larger than this are not the API's."""
MAX_HEADERS = 100
"""As ``http.client``: an answer with more header lines is refused."""
_RECV = 64 * 1024


class _Connection:
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


class _Unanswered(Exception):
    """The connection ended before any byte of an answer (a kept-alive one the server
    closed meanwhile, perhaps)."""


def _head(conn: _Connection) -> bytes:
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
            raise AttemptFailed(f"the API's answer has more than {MAX_HEAD // 1024} KiB of headers")
        start = max(0, len(conn.buffer) - 3)
        if not conn.fill():
            if conn.buffer:
                raise AttemptFailed("the API closed the connection in the middle of its answer")
            raise _Unanswered


class _Head(NamedTuple):
    status: int
    keep_alive: bool
    """What the version and the Connection header allow (a body read to the end of the
    connection ends it anyway)."""
    fields: dict[str, str]


def _parse_head(head: bytes) -> _Head:
    """Status, keep-alive and header fields (names lowercased, repeats joined by ``, ``)."""
    lines = head.split(b"\n")
    first = lines[0].rstrip(b"\r")
    parts = first.split(None, 2)
    code = parts[1].decode("latin-1") if len(parts) > 1 else ""
    status = ascii_values.whole(code) if len(code) == 3 else None
    if status is None or status < 100 or not parts[0].startswith(b"HTTP/"):
        raise AttemptFailed(
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
            raise AttemptFailed(f"the API's answer has more than {MAX_HEADERS} headers")
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
    return _Head(status, keep_alive, fields)


def _exact(conn: _Connection, size: int) -> bytes:
    """The next ``size`` bytes of the answer."""
    while len(conn.buffer) < size:
        if not conn.fill():
            raise AttemptFailed("the API closed the connection in the middle of its answer")
    data = bytes(conn.buffer[:size])
    del conn.buffer[:size]
    return data


def _line(conn: _Connection) -> bytes:
    """The next line of a chunked body (a size or a trailer), without its end."""
    while (end := conn.buffer.find(b"\n")) < 0:
        if len(conn.buffer) > MAX_HEAD:
            raise AttemptFailed("the API's chunked answer has an overlong line")
        if not conn.fill():
            raise AttemptFailed("the API closed the connection in the middle of its answer")
    line = bytes(conn.buffer[:end]).rstrip(b"\r")
    del conn.buffer[: end + 1]
    return line


def _chunked(conn: _Connection, limit: int, what: str) -> bytes:
    """A chunked body (RFC 9112 7.1); ResponseError past ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        text = _line(conn).split(b";", 1)[0].strip().decode("latin-1")
        length = int(text, 16) if text and all(c in _HEX for c in text) else None
        if length is None:
            raise AttemptFailed("the API's chunked answer has a bad chunk size")
        if length == 0:
            while _line(conn):  # trailer fields, then the blank line
                pass
            return b"".join(parts)
        size += length
        if size > limit:
            raise too_large(what, limit)
        parts.append(_exact(conn, length))
        _exact(conn, 2)  # the CRLF after the chunk


_HEX = frozenset("0123456789abcdefABCDEF")


def _to_end(conn: _Connection, limit: int, what: str) -> bytes:
    """The body up to the end of the connection; ResponseError past ``limit`` bytes."""
    while len(conn.buffer) <= limit and conn.fill():
        pass
    if len(conn.buffer) > limit:
        raise too_large(what, limit)
    data = bytes(conn.buffer)
    conn.buffer.clear()
    return data


class _Stale(Exception):
    """The server closed the connection before answering (maybe an idle kept-alive one)."""


class _Watchdog:
    """Shuts down the socket of each request still running at its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, tuple[float, _Connection]] = {}
        self._fired: set[int] = set()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, conn: _Connection, deadline: float) -> None:
        with self._lock:
            self._active[id(conn)] = (deadline, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="api-deadlines", daemon=True)
                self._thread.start()

    def release(self, conn: _Connection) -> bool:
        """Stop watching ``conn``; True when its deadline had fired."""
        with self._lock:
            self._active.pop(id(conn), None)
            if not self._fired:
                return False
            fired = id(conn) in self._fired
            self._fired.discard(id(conn))
            return fired

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._closed.clear()

    def _run(self) -> None:
        while not self._closed.wait(_TICK):
            now = time.monotonic()
            with self._lock:
                due = [(key, c) for key, (end, c) in self._active.items() if end <= now]
                for key, _conn in due:
                    del self._active[key]
                    self._fired.add(key)
            for _key, conn in due:
                cut = conn.cut
                if cut is not None:
                    # The plain socket's shutdown, even under TLS: it must not touch the TLS
                    # state the requesting thread is reading with.
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(cut, socket.SHUT_RDWR)


class Transport:
    """Kept-alive connections to the API's host; thread-safe, one request per connection
    at a time, as many connections as requests run at once."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str],
        ca_bundle: Path | None,
        connect_timeout: float,
        read_timeout: float,
        max_body: int,
    ) -> None:
        parts = urlsplit(url)
        self._url = url
        self._host = parts.hostname or ""
        https = parts.scheme == "https"
        self._port = parts.port or (443 if https else 80)
        self._fields = _fields(self._host, parts.port, headers)
        self._heads: dict[tuple[str, str], bytes] = {}
        self._context = tls_context(ca_bundle) if https else None
        self._timeouts = (connect_timeout, read_timeout)
        self._max_body = max_body
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._watchdog = _Watchdog()

    def close(self) -> None:
        """Close the idle connections and stop the watchdog (a later request reopens)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self._watchdog.close()

    def request(
        self, method: str, url: str, *, body: bytes | None, limit: float, what: str
    ) -> Answer:
        """One attempt within ``limit`` seconds. AttemptFailed for what a retry may cure;
        ApiError for what it cannot (verification failed, an oversized answer)."""
        path = url[url.index("/", url.index("//") + 2) :] if url.count("/") > 2 else "/"
        deadline = time.monotonic() + limit
        conn, reused = self._take(limit)
        try:
            return self._exchange(
                conn, method=method, path=path, body=body, deadline=deadline, limit=limit, what=what
            )
        except _Stale:
            if not reused or time.monotonic() >= deadline:
                raise AttemptFailed("the API closed the connection") from None
        # A kept-alive connection the server had closed meanwhile: one fresh try.
        conn = self._new(deadline - time.monotonic())
        try:
            return self._exchange(
                conn, method=method, path=path, body=body, deadline=deadline, limit=limit, what=what
            )
        except _Stale:
            raise AttemptFailed("the API closed the connection") from None

    def _take(self, limit: float) -> tuple[_Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(limit), False

    def _new(self, limit: float) -> _Connection:
        timeout = max(0.01, min(*self._timeouts, limit))
        return _Connection(self._host, self._port, timeout, self._context)

    def _head_of(self, method: str, path: str) -> bytes:
        """The request line and the fixed headers of ``method`` on ``path``, built once."""
        head = self._heads.get((method, path))
        if head is None:
            if any(c in path for c in " \r\n") or not path.isascii():
                raise ApiError(f"the API path {path!r} cannot be sent; check TRACKSSL_URL")
            head = f"{method} {path} HTTP/1.1\r\n{self._fields}".encode("latin-1")
            self._heads[(method, path)] = head
        return head

    def _exchange(
        self,
        conn: _Connection,
        *,
        method: str,
        path: str,
        body: bytes | None,
        deadline: float,
        limit: float,
        what: str,
    ) -> Answer:
        """Send on ``conn`` and read the whole answer; ``conn`` is then kept or closed."""
        self._watchdog.watch(conn, deadline)
        try:
            sock = conn.connect()
            # Kept alive or new: the read timeout of this request, not an earlier one's.
            sock.settimeout(max(0.01, min(self._timeouts[1], limit)))
            head = self._head_of(method, path)
            if body is None:
                sock.sendall(head + b"\r\n")
            else:
                length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                sock.sendall(b"".join((head, length.encode("ascii"), body)))
            answer, keep = self._answer(conn, method, what)
        except BaseException as exc:
            fired = self._watchdog.release(conn)
            conn.close()
            # A socket timeout that ends at the deadline is the deadline, whichever came first.
            if fired or (isinstance(exc, TimeoutError) and time.monotonic() >= deadline - _TICK):
                raise AttemptFailed(f"no complete answer within {limit:g} s") from None
            raise _failure(exc, self._url) from None
        if self._watchdog.release(conn):
            conn.close()
            raise AttemptFailed(f"no complete answer within {limit:g} s")
        if not keep or conn.buffer:  # more than the answer arrived: do not reuse it
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return answer

    def _answer(self, conn: _Connection, method: str, what: str) -> tuple[Answer, bool]:
        """The next answer on ``conn`` (interim 1xx answers skipped) and whether the
        connection may be reused."""
        while True:
            parsed = _parse_head(_head(conn))
            if not 100 <= parsed.status < 200:
                break
        fields, limit = parsed.fields, self._max_body
        keep = parsed.keep_alive
        declared = ascii_values.whole(fields.get("content-length", ""), cap=limit + 1)
        if method == "HEAD" or parsed.status in (204, 304):
            body = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            body = _chunked(conn, limit, what)
        elif declared is not None:
            if declared > limit:
                raise too_large(what, limit)
            body = _exact(conn, declared)
        else:
            body, keep = _to_end(conn, limit, what), False
        return Answer(parsed.status, body, lambda name: fields.get(name.lower())), keep


def _fields(host: str, port: int | None, headers: dict[str, str]) -> str:
    """The header lines every request carries: Host (as ``http.client`` writes it), no
    compression, then ``headers``; ApiError for a value that would break the request."""
    name = host.encode("idna").decode("ascii") if not host.isascii() else host
    shown = f"[{name}]" if ":" in name else name
    lines = [f"Host: {shown}{f':{port}' if port is not None else ''}", "Accept-Encoding: identity"]
    for key, value in headers.items():
        if any(c in key + value for c in "\r\n\0") or not (key + value).isascii():
            raise ApiError(f"the {key} header cannot be sent: it holds a line break or non-ASCII")
        lines.append(f"{key}: {value}")
    return "".join(f"{line}\r\n" for line in lines)


def _failure(exc: BaseException, url: str) -> BaseException:
    """What a failed exchange means: retry, give up, or (a bug) the exception itself."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ApiError(tls_failure(url, exc.verify_message or str(exc)))
    if failures.not_tls(exc):  # a wrong URL: no retry can help
        return ApiError(failures.not_tls_words(url))
    if isinstance(exc, _Unanswered | BrokenPipeError | ConnectionResetError):
        return _Stale()
    if isinstance(exc, TimeoutError):
        return AttemptFailed("timed out")
    if isinstance(exc, OSError):
        return AttemptFailed(failures.words(exc, url), failures.advice(exc))
    return exc
