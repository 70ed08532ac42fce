"""A real HTTP proxy on loopback that records every byte its clients send, for tests.

It tunnels ``CONNECT host:port`` and forwards plain ``GET http://host:port/...`` requests
(what a client sends a forward proxy), to loopback origins only. ``echo_auth=True`` makes it
refuse every CONNECT with ``407`` and a reason phrase that repeats the request's
``Proxy-Authorization`` header, as a badly written proxy does.

    with RecordingProxy() as proxy:
        env["HTTPS_PROXY"] = proxy.url("user", "password")
        ...run the agent...
        proxy.received                  # every byte clients sent, b"" if none came
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from urllib.parse import urlsplit


class RecordingProxy:
    """A forward and CONNECT proxy on 127.0.0.1; a context manager."""

    def __init__(self, *, echo_auth: bool = False) -> None:
        self.echo_auth = echo_auth
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        self._received = bytearray()
        self.request_lines: list[str] = []
        """The first line of each request (``CONNECT 127.0.0.1:443 HTTP/1.1``...)."""
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """The proxy's URL for HTTP(S)_PROXY, with ``user:password@`` when given."""
        credentials = f"{user}:{password}@" if user is not None else ""
        return f"http://{credentials}127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        """Everything the proxy's clients sent so far (tunnelled bytes included)."""
        with self._lock:
            return bytes(self._received)

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting."""
        self.sock.close()

    def _record(self, data: bytes) -> None:
        with self._lock:
            self._received += data

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_head(self, conn: socket.socket) -> tuple[bytes, bytes]:
        """The request head (through its blank line) and what came after it."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return b"", b""
            self._record(chunk)
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n", rest

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            head, rest = self._read_head(conn)
            if not head:
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            with self._lock:
                self.request_lines.append(request_line)
            method, target, _version = request_line.split(" ", 2)
            if method == "CONNECT":
                self._connect(conn, head, target, rest)
            else:
                self._forward(conn, head, method, target, rest)

    def _connect(self, conn: socket.socket, head: bytes, target: str, rest: bytes) -> None:
        if self.echo_auth:
            echoed = next(
                (line for line in head.split(b"\r\n") if line.lower().startswith(b"proxy-auth")),
                b"no credentials",
            )
            conn.sendall(b"HTTP/1.1 407 " + echoed + b"\r\nContent-Length: 0\r\n\r\n")
            return
        host, port = target.rsplit(":", 1)
        upstream = self._dial(host.strip("[]"), int(port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with upstream:
            upstream.sendall(rest)
            self._pump(conn, upstream)

    def _forward(
        self, conn: socket.socket, head: bytes, method: str, target: str, rest: bytes
    ) -> None:
        """Relay one request to its origin (origin-form, Connection: close), then close."""
        parts = urlsplit(target)
        lines = head.split(b"\r\n")
        length = 0
        kept = []
        for line in lines[1:]:
            name = line.split(b":", 1)[0].strip().lower()
            if name == b"content-length":
                length = int(line.split(b":", 1)[1])
            if name not in (b"connection", b"proxy-connection", b"proxy-authorization"):
                kept.append(line)
        body = rest
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            self._record(chunk)
            body += chunk
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = b"\r\n".join([f"{method} {path} HTTP/1.1".encode(), b"Connection: close", *kept])
        upstream = self._dial(parts.hostname or "", parts.port or 80)
        with upstream:
            upstream.sendall(request.rstrip(b"\r\n") + b"\r\n\r\n" + body)
            while data := upstream.recv(65536):
                conn.sendall(data)

    @staticmethod
    def _dial(host: str, port: int) -> socket.socket:
        if host != "localhost":
            # The tests only ever reach loopback origins through it.
            assert ipaddress.ip_address(host).is_loopback, host
        return socket.create_connection((host, port), timeout=10)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Both directions until either side closes; the client's bytes recorded."""

        def back() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=back, daemon=True)
        thread.start()
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                self._record(data)
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)
        thread.join(10)
