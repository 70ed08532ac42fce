"""How requests reach the API when no proxy applies: kept-alive HTTP/1.1 connections,
each attempt cut at its own absolute deadline. It moves bytes; retries, the schema and
what a status means are ``api``'s.

``requests`` rebuilds headers, re-parses the URL and merges environment settings on every
call, and costs a tenth of a second to import; a post needs none of that, nor what
``http.client`` does on every call (validate each header again, parse the answer's headers
with the e-mail parser): here a request is one ``sendall`` of a head built once per path
plus the body, and ``http_wire`` reads the answer. One watchdog
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

from trackssl_agent.base import ascii_values
from trackssl_agent.cloud import failures, http_wire
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


class _Stale(Exception):
    """The server closed the connection before answering (maybe an idle kept-alive one)."""


class _Watchdog:
    """Shuts down the socket of each request still running at its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, tuple[float, http_wire.Connection]] = {}
        self._fired: set[int] = set()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, conn: http_wire.Connection, deadline: float) -> None:
        with self._lock:
            self._active[id(conn)] = (deadline, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="api-deadlines", daemon=True)
                self._thread.start()

    def release(self, conn: http_wire.Connection) -> bool:
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
        self._idle: list[http_wire.Connection] = []
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

    def _take(self, limit: float) -> tuple[http_wire.Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(limit), False

    def _new(self, limit: float) -> http_wire.Connection:
        timeout = max(0.01, min(*self._timeouts, limit))
        return http_wire.Connection(self._host, self._port, timeout, self._context)

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
        conn: http_wire.Connection,
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

    def _answer(self, conn: http_wire.Connection, method: str, what: str) -> tuple[Answer, bool]:
        """The next answer on ``conn`` (interim 1xx answers skipped) and whether the
        connection may be reused."""
        while True:
            head = http_wire.parse_head(http_wire.read_head(conn))
            if not 100 <= head.status < 200:
                break
        try:
            body, keep = http_wire.read_body(conn, head, method, self._max_body)
        except http_wire.TooLarge:
            raise too_large(what, self._max_body) from None
        fields = head.fields
        return Answer(head.status, body, lambda name: fields.get(name.lower())), keep


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
    if isinstance(exc, http_wire.Unanswered | BrokenPipeError | ConnectionResetError):
        return _Stale()
    if isinstance(exc, http_wire.WireError):
        return AttemptFailed(str(exc))
    if isinstance(exc, TimeoutError):
        return AttemptFailed("timed out")
    if isinstance(exc, OSError):
        return AttemptFailed(failures.words(exc, url), failures.advice(exc))
    return exc
