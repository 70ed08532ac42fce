"""Real TLS and misbehaving TCP servers on loopback for the probe tests.

Every server listens on a port of 127.0.0.1 (or ::1) it bound itself (port 0) and runs in
daemon threads of the test process, except the command servers (``openssl s_server``,
``gnutls-serv``), which run as subprocesses on ports they are proven to hold alone.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.certs import Chain
from tests.listeners import PortTaken, own_listeners, unused_ports

Handler = Callable[[socket.socket], None]


class TcpServer:
    """A loopback listener that hands each accepted connection to ``handler`` in a thread."""

    def __init__(
        self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0, accept: bool = True
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))  # port 0: a free one
        self.sock.listen(256)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.handler = handler
        self.connections: list[socket.socket] = []
        self._peers: dict[int, tuple[str, int]] = {}
        self._markers: set[tuple[str, int]] = set()
        self._closed = threading.Event()
        if accept:
            threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        """``host:port`` as a TARGET."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self._peers[id(conn)] = peer[:2]
            self.connections.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handler(conn)

    def accepted_before_now(self, timeout: float = 10) -> int:
        """How many connections reached this server before now, counted once the accept
        thread has taken every one of them: a marker connection is made and waited for, and
        connections are accepted in the order they were made. So a test that asserts that
        nothing connected does not pass merely because the accept thread was slow. Marker
        connections (this one and earlier ones) are not counted."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as marker:
            marker.connect((self.host, self.port))
            mine = marker.getsockname()[:2]
            self._markers.add(mine)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                peers = [self._peers.get(id(conn)) for conn in list(self.connections)]
                if mine in peers:
                    before = peers[: peers.index(mine)]
                    return sum(1 for peer in before if peer not in self._markers)
                time.sleep(0.01)
        raise AssertionError(f"the marker connection to {self.endpoint} was not accepted")

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.sock.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.close()


def server_context(
    chain: Chain,
    *,
    max_version: ssl.TLSVersion | None = None,
    client_ca: Path | None = None,
) -> ssl.SSLContext:
    """A server context presenting ``chain``; ``client_ca`` demands a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain.cert_file, chain.key_file)
    if max_version is not None:
        context.maximum_version = max_version
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def tls_handler(context: ssl.SSLContext) -> Handler:
    """Handshake as a server, then wait for the client to close."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        with context.wrap_socket(conn, server_side=True) as tls, contextlib.suppress(OSError):
            tls.recv(1)

    return handle


def tls_server(context: ssl.SSLContext, host: str = "127.0.0.1") -> TcpServer:
    """A TLS server with ``context`` on loopback."""
    return TcpServer(tls_handler(context), host=host)


def sni_server(contexts: dict[str, ssl.SSLContext], default: ssl.SSLContext) -> TcpServer:
    """Presents the certificate of the SNI name it is asked for, ``default`` otherwise."""

    def pick(tls: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name in contexts:
            tls.context = contexts[name]

    default.sni_callback = pick
    return tls_server(default)


def silent_server() -> TcpServer:
    """Accepts connections (the kernel completes them) and never says a word."""
    return TcpServer(lambda conn: time.sleep(3600), accept=True)


def trickle_server(interval: float = 0.2) -> TcpServer:
    """Answers a ClientHello with a TLS record header, then one byte per ``interval``."""

    def handle(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"\x16\x03\x03\x40\x00")
        for _ in range(600):
            time.sleep(interval)
            conn.sendall(b"\x00")

    return TcpServer(handle)


def reset_server() -> TcpServer:
    """Reads the ClientHello, then resets the connection (RST, not FIN)."""

    def handle(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    return TcpServer(handle)


def http_server() -> TcpServer:
    """A plain HTTP server: answers anything with a 400 page."""

    def handle(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        conn.close()

    return TcpServer(handle)


class RecordingProxy:
    """Forwards to a backend and records every byte the client sent, and when it closed."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.received = bytearray()
        self.client_closed = threading.Event()
        self.server = TcpServer(self._handle)
        self.port = self.server.port

    def _handle(self, client: socket.socket) -> None:
        backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=10)

        def pump_back() -> None:
            with contextlib.suppress(OSError):
                while data := backend.recv(65536):
                    client.sendall(data)

        threading.Thread(target=pump_back, daemon=True).start()
        client.settimeout(10)
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                break
            if not data:
                break
            self.received += data
            backend.sendall(data)
        self.client_closed.set()
        backend.close()

    def close(self) -> None:
        """Stop the proxy."""
        self.server.close()


def record_types(stream: bytes) -> list[int]:
    """The content types of the TLS records in ``stream``."""
    types: list[int] = []
    offset = 0
    while offset + 5 <= len(stream):
        types.append(stream[offset])
        (length,) = struct.unpack("!H", stream[offset + 3 : offset + 5])
        offset += 5 + length
    return types


class CommandServer:
    """A TLS server program run as a subprocess on a loopback port that it alone listens on
    (``tests.listeners``): picked free, bound by the program, started again on another port
    should someone else have taken it first."""

    def __init__(self, command: Callable[[int], list[str]]) -> None:
        name = command(0)[0]
        if shutil.which(name) is None:
            raise RuntimeError(f"{name} is not installed (scripts/install-servers.sh)")
        failures = []
        for _ in range(5):
            (self.port,) = unused_ports(1)
            self.proc = subprocess.Popen(
                command(self.port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
            try:
                if self._listening():
                    return
            except PortTaken as exc:
                failures.append(str(exc))
                self.close()
                continue
            self.close()  # first: its stderr ends only once it is gone
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            failures.append(f"did not listen: {err}")
        raise RuntimeError(f"{name} did not start: {failures}")

    def _listening(self) -> bool:
        """Wait until it listens (True) or exits (False); PortTaken if someone else does."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if own_listeners(self.proc.pid, [self.port]):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop the server."""
        self.proc.kill()
        self.proc.wait()


class OpensslServer(CommandServer):
    """``openssl s_server`` for legacy protocol versions and ciphers."""

    def __init__(self, chain: Chain, *extra: str) -> None:
        super().__init__(
            lambda port: [
                "openssl", "s_server", "-accept", f"127.0.0.1:{port}",
                "-cert", str(chain.cert_file), "-key", str(chain.key_file), "-quiet", *extra,
            ],
        )  # fmt: skip


class GnutlsServer(CommandServer):
    """``gnutls-serv`` with a priority string: it can do what OpenSSL servers cannot, such as
    leaving out RFC 5746 renegotiation info (``%DISABLE_SAFE_RENEGOTIATION``).

    It listens on every local address (it has no bind option); the tests dial 127.0.0.1 only.
    """

    def __init__(self, chain: Chain, priority: str) -> None:
        super().__init__(
            lambda port: [
                "gnutls-serv", "--echo", "-p", str(port), "--priority", priority,
                "--x509certfile", str(chain.cert_file), "--x509keyfile", str(chain.key_file),
            ],
        )  # fmt: skip


@contextlib.contextmanager
def running(server: TcpServer) -> Iterator[TcpServer]:
    """Close ``server`` at the end of the block."""
    try:
        yield server
    finally:
        server.close()
