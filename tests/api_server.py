"""A real loopback HTTP(S) server that speaks the TrackSSL API of SPEC section 5, for tests.

Usage::

    with ApiServer() as server:                     # or the ``api_server`` fixture
        server.domains = [{"domain_id": 1, "hostname": "127.0.0.1", "port": "8443"}]
        env = server.env()                          # TRACKSSL_URL / _AUTH_TOKEN / _AGENT_TOKEN
        ...run the agent...
        server.posted                               # accepted ``domain`` payloads, in order
        server.requests                             # every request, accepted or not

Canned failures: ``server.script("domains", Reply.error(503), OK)`` answers the next two
``domains.json`` requests with 503 then normal service; ``server.fail("certificate",
HANG)`` answers every post that way until ``server.clear()``. Endpoints are
``"domains"`` and ``"certificate"``. ``HANG`` holds the request open until
``release()`` or the server stops; ``server.hung`` counts requests being held.
``server.on_post = f`` calls ``f(request)`` for each result post before it is answered,
e.g. to look at the agent's outbox on disk.

Hostile answers: ``Reply.trickled(body, every=0.2)`` sends the headers at once and then
the body one byte every 0.2 s (``headers_too=True`` trickles the status line and headers
as well); ``Reply.nested(depth)`` is ``[`` x depth; ``Reply.nulls(n)`` is a domain list
of ``n`` ``null`` entries; any ``Reply(status, body)`` can carry CR, LF and ESC;
``Reply.echoing(status, body, headers)`` puts the request's ``Authorization`` header where
``{authorization}`` stands in its body and header values, as a careless server does.

``ApiServer(tls=chain)`` serves https with a ``tests.certs.make_chain`` chain; point
``TRACKSSL_CA_BUNDLE`` at ``chain.ca_file``. The server checks the bearer token and the
agent token exactly as the cloud does (401 and 404) and records everything it sees.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.certs import Chain

AUTH_TOKEN = "tsk_live_9f3Kq2ZxT7pLmW4vB8nR"  # noqa: S105 - a test-only token
AGENT_TOKEN = "agent-7c1e2d"  # noqa: S105 - a public id


@dataclass(frozen=True)
class Reply:
    """A canned answer: status, body and headers, or a hang."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    hang: bool = False
    """Hold the request open (answer nothing) until ``release()`` or shutdown."""
    normal: bool = False
    """Serve this request normally (a placeholder inside a script)."""
    trickle: float = 0.0
    """Seconds between single bytes of the body (0: send it at once)."""
    trickle_headers: bool = False
    """Trickle the status line and headers too, not only the body."""
    echo: bool = False
    """Replace ``{authorization}`` in the body and header values with that request header."""

    @staticmethod
    def error(status: int, **headers: str) -> Reply:
        """An error answer with a small JSON body and optional headers."""
        body = json.dumps({"error": f"HTTP {status}"}).encode()
        return Reply(status, body, headers=tuple(headers.items()))

    @staticmethod
    def trickled(body: bytes, every: float, *, headers_too: bool = False) -> Reply:
        """A 200 whose body (and headers, with ``headers_too``) arrive a byte at a time."""
        return Reply(200, body, trickle=every, trickle_headers=headers_too)

    @staticmethod
    def echoing(status: int, body: bytes = b"", **headers: str) -> Reply:
        """An answer that repeats the request's Authorization header where ``body`` or a
        header value says ``{authorization}``."""
        return Reply(status, body, headers=tuple(headers.items()), echo=True)

    @staticmethod
    def nested(depth: int) -> Reply:
        """A 200 of ``depth`` opening brackets: JSON nested beyond any parser's stack."""
        return Reply(200, b"[" * depth)

    @staticmethod
    def nulls(count: int) -> Reply:
        """A domain list of ``count`` ``null`` entries."""
        return Reply(200, b'{"data": [' + b",".join([b"null"] * count) + b"]}")


OK = Reply(normal=True)
UNAUTHORIZED = Reply.error(401)
FORBIDDEN = Reply.error(403)
NOT_FOUND = Reply.error(404)
TIMEOUT_408 = Reply.error(408)
TOO_MANY = Reply.error(429, **{"Retry-After": "7"})
SERVER_ERROR = Reply.error(500)
UNAVAILABLE = Reply.error(503)
HANG = Reply(hang=True)
INVALID_JSON = Reply(200, b'{"data": [{"domain_id": 1, ', "application/json")
HTML_PAGE = Reply(
    200,
    b"<!DOCTYPE html><html><head><title>Proxy login required</title></head>"
    b"<body><h1>Please sign in</h1></body></html>",
    "text/html; charset=utf-8",
)


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    endpoint: str
    """``domains``, ``certificate`` or ``other``."""
    client_port: int
    """The client's source port: equal ports mean one kept-alive connection."""
    status: int = 0
    """What the server answered (0 while hung or for a dropped connection)."""
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class ApiServer:
    """The fake TrackSSL cloud on 127.0.0.1; a context manager."""

    def __init__(
        self,
        *,
        auth_token: str = AUTH_TOKEN,
        agent_token: str = AGENT_TOKEN,
        tls: Chain | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.auth_token = auth_token
        self.agent_token = agent_token
        self.domains: list[dict[str, Any]] = []
        """What ``domains.json`` returns under ``data``; set freely."""
        self.requests: list[Request] = []
        self.posted: list[dict[str, Any]] = []
        """The ``domain`` objects of accepted posts, in arrival order."""
        self.on_post: Callable[[Request], None] | None = None
        """Called with each result post as it arrives, before it is answered (in the
        handler's thread): what the agent had done by then, e.g. on disk, can be looked at."""
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = {"domains": deque(), "certificate": deque()}
        self._always: dict[str, Reply] = {}
        self._release = threading.Event()
        self._hung = 0
        self._stopping = False
        self._tls = tls
        self._httpd = _Server((host, 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- control -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to use as ``TRACKSSL_URL``."""
        host, port = self._httpd.server_address[:2]
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host!s}:{port}"

    @property
    def port(self) -> int:
        """The listening port."""
        return int(self._httpd.server_address[1])

    @property
    def hung(self) -> int:
        """How many requests are being held open right now."""
        with self._lock:
            return self._hung

    def env(self) -> dict[str, str]:
        """The three variables an agent needs to talk to this server."""
        return {
            "TRACKSSL_URL": self.url,
            "TRACKSSL_AUTH_TOKEN": self.auth_token,
            "TRACKSSL_AGENT_TOKEN": self.agent_token,
        }

    def script(self, endpoint: str, *replies: Reply) -> None:
        """Answer the next requests to ``endpoint`` with ``replies``, then normally."""
        with self._lock:
            self._scripts[endpoint].extend(replies)

    def fail(self, endpoint: str, reply: Reply) -> None:
        """Answer every request to ``endpoint`` with ``reply`` until ``clear()``."""
        with self._lock:
            self._always[endpoint] = reply

    def clear(self) -> None:
        """Drop scripts and permanent failures; release hung requests."""
        with self._lock:
            for queue in self._scripts.values():
                queue.clear()
            self._always.clear()
        self.release()

    def release(self) -> None:
        """Let hung requests end (their connection is closed without an answer)."""
        with self._lock:
            event, self._release = self._release, threading.Event()
        event.set()

    def posts(self, endpoint: str = "certificate") -> list[Request]:
        """Recorded requests to ``endpoint``."""
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def posted_ids(self) -> list[int]:
        """``domain_id`` of each accepted post, in order."""
        with self._lock:
            return [int(p["domain_id"]) for p in self.posted]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Poll ``predicate()`` until true or ``timeout``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return bool(predicate())

    def __enter__(self) -> ApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and release every hung request."""
        self._stopping = True
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    # -- used by the handler -----------------------------------------------------------

    def _next_reply(self, endpoint: str) -> Reply:
        with self._lock:
            queue = self._scripts.get(endpoint)
            if queue:
                return queue.popleft()
            return self._always.get(endpoint, OK)

    def _record(self, request: Request) -> int:
        with self._lock:
            self.requests.append(request)
            return len(self.requests) - 1

    def _answered(self, index: int, status: int) -> None:
        with self._lock:
            old = self.requests[index]
            self.requests[index] = Request(
                old.method, old.path, old.headers, old.body, old.endpoint,
                old.client_port, status, old.at,
            )  # fmt: skip

    def _hang(self) -> None:
        with self._lock:
            self._hung += 1
            event = self._release
        if self._stopping:
            event.set()
        try:
            event.wait()
        finally:
            with self._lock:
                self._hung -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], handler: type[_Handler], api: ApiServer) -> None:
        self.api = api
        self.context: ssl.SSLContext | None = None
        if api._tls is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(api._tls.cert_file, api._tls.key_file)
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # Headers and body go out in two writes; without NODELAY the body waits for the
        # client's delayed ACK (40 ms a response), which no real API server does.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is not None:
            # The handshake runs in the handler thread, so a stuck client blocks nobody.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API offers
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``ApiServer.requests`` instead."""

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)
            try:
                self.connection.do_handshake()
            except (OSError, ssl.SSLError):
                self.close_connection = True

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        api = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        prefix = "/api/v1/agents/"
        path = self.path
        endpoint = "other"
        agent = ""
        if path.startswith(prefix):
            agent, _, leaf = path[len(prefix) :].partition("/")
            if leaf == "domains.json" and self.command == "GET":
                endpoint = "domains"
            elif leaf == "certificate.json" and self.command == "POST":
                endpoint = "certificate"
        request = Request(
            self.command, path, dict(self.headers.items()), body, endpoint,
            int(self.client_address[1]),
        )  # fmt: skip
        index = api._record(request)
        if endpoint == "certificate" and api.on_post is not None:
            api.on_post(request)
        reply = api._next_reply(endpoint) if endpoint != "other" else OK
        if reply.hang:
            api._hang()
            self.close_connection = True
            return
        if reply.trickle:
            self._trickle(index, reply)
            return
        if reply.echo:
            auth = self.headers.get("Authorization") or ""
            body = reply.body.replace(b"{authorization}", auth.encode("latin-1"))
            echoed = tuple((k, v.replace("{authorization}", auth)) for k, v in reply.headers)
            self._send(index, reply.status, body, reply.content_type, echoed)
            return
        if not reply.normal:
            self._send(index, reply.status, reply.body, reply.content_type, reply.headers)
            return
        if self.headers.get("Authorization") != f"Bearer {api.auth_token}":
            self._json(index, 401, {"error": "Unauthorized"})
        elif endpoint == "other" or agent != api.agent_token:
            self._json(index, 404, {"error": "Not found"})
        elif endpoint == "domains":
            with api._lock:
                data = list(api.domains)
            self._json(index, 200, {"data": data})
        else:
            try:
                payload = json.loads(body)
                domain = payload["domain"]
                assert isinstance(domain, dict)
            except (ValueError, KeyError, TypeError, AssertionError):
                self._json(index, 422, {"error": "Unprocessable"})
                return
            with api._lock:
                api.posted.append(domain)
            self._json(index, 201, {"message": "created"})

    def _trickle(self, index: int, reply: Reply) -> None:
        """Send ``reply`` a byte every ``reply.trickle`` seconds until done, the client
        goes away or the server stops."""
        api = self.server.api
        head = (
            f"HTTP/1.1 {reply.status} OK\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n\r\n"
        ).encode()
        api._answered(index, reply.status)
        self.close_connection = True
        try:
            if not reply.trickle_headers:
                self.wfile.write(head)
                head = b""
            for byte in head + reply.body:
                if api._stopping:
                    return
                self.wfile.write(bytes([byte]))
                time.sleep(reply.trickle)
        except OSError:
            return  # the client cut the connection: what the tests want

    def _json(self, index: int, status: int, value: object) -> None:
        self._send(index, status, json.dumps(value).encode(), "application/json", ())

    def _send(
        self,
        index: int,
        status: int,
        body: bytes,
        content_type: str,
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.server.api._answered(index, status)  # before the client can see the answer
        self.end_headers()
        self.wfile.write(body)


def domain_entries(ports: Mapping[int, int], host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """``domains.json`` entries for ``{domain_id: port}`` on ``host``."""
    return [{"domain_id": d, "hostname": host, "port": str(p)} for d, p in ports.items()]


def serve(domains: list[dict[str, Any]] | None = None) -> Iterator[ApiServer]:
    """Generator form for fixtures: yields a started server, stops it afterwards."""
    with ApiServer() as server:
        server.domains = list(domains or [])
        yield server
