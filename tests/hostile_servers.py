"""Hostile servers on loopback: floods of lines, XML and TLS records, and a raw TLS 1.2
server that presents certificates OpenSSL cannot load.

Each runs in daemon threads of the test process (``tests.tls_servers.TcpServer``) and stops
by itself: a flood ends when the client goes away or after ``seconds``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time

from tests.tls_servers import TcpServer

FLOOD_SECONDS = 20.0
_BLOCK = 64 * 1024


def flood_server(
    flood: bytes,
    *,
    greeting: bytes = b"",
    after_command: bool = False,
    count: int | None = None,
    seconds: float = FLOOD_SECONDS,
) -> TcpServer:
    """Sends ``greeting``, waits for one client write if ``after_command``, then ``flood``
    ``count`` times (then holds the connection open), or without end until the client
    leaves or ``seconds`` pass."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(seconds)
        if greeting:
            conn.sendall(greeting)
        if after_command:
            conn.recv(4096)
        if count is not None:
            conn.sendall(flood * count)
            conn.recv(1)
            return
        block = flood * max(1, _BLOCK // len(flood))
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            conn.sendall(block)

    return TcpServer(handle)


# --- raw TLS ---------------------------------------------------------------------------------


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed")
        data += chunk
    return data


def read_client_hello(conn: socket.socket) -> bytes:
    """The ClientHello handshake body (OpenSSL sends it in one record)."""
    kind, _version, length = struct.unpack("!BHH", _recv_exact(conn, 5))
    record = _recv_exact(conn, length)
    assert kind == 0x16 and record[0] == 1, "not a ClientHello"
    return record[4:]


def client_ciphers(hello: bytes) -> list[int]:
    """The cipher suites a ClientHello body offers."""
    at = 2 + 32
    at += 1 + hello[at]  # session id
    (length,) = struct.unpack("!H", hello[at : at + 2])
    suites = hello[at + 2 : at + 2 + length]
    return [int.from_bytes(suites[i : i + 2], "big") for i in range(0, len(suites), 2)]


def handshake_message(kind: int, body: bytes) -> bytes:
    """One handshake message: type, 24-bit length, body."""
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def records(content_type: int, stream: bytes, size: int = 16384) -> bytes:
    """``stream`` cut into TLS 1.2 records of at most ``size`` bytes."""
    return b"".join(
        struct.pack("!BHH", content_type, 0x0303, len(stream[i : i + size])) + stream[i : i + size]
        for i in range(0, len(stream), size)
    )


def server_hello(cipher: int, version: int = 0x0303) -> bytes:
    """A ServerHello choosing ``cipher``, no session id, with an empty renegotiation_info;
    TLS 1.3 (0x0304) is chosen as RFC 8446 does, in supported_versions."""
    extensions = struct.pack("!HHB", 0xFF01, 1, 0)
    legacy = version
    if version == 0x0304:
        extensions += struct.pack("!HHH", 0x002B, 2, version)
        legacy = 0x0303
    body = (
        struct.pack("!H", legacy)
        + os.urandom(32)
        + b"\x00"
        + struct.pack("!HB", cipher, 0)
        + struct.pack("!H", len(extensions))
        + extensions
    )
    return handshake_message(2, body)


def certificate_message(ders: tuple[bytes, ...]) -> bytes:
    """RFC 5246 7.4.2 Certificate: a 24-bit list length, each DER with a 24-bit length."""
    entries = b"".join(len(der).to_bytes(3, "big") + der for der in ders)
    return handshake_message(11, len(entries).to_bytes(3, "big") + entries)


SERVER_HELLO_DONE = handshake_message(14, b"")
PREFERRED = (0x009C, 0xC02F, 0x002F)  # AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM, AES128-SHA


def raw_tls12_server(
    ders: tuple[bytes, ...], *, record_size: int = 16384, version: int = 0x0303
) -> TcpServer:
    """Speaks TLS 1.2 from bytes: ServerHello, Certificate with ``ders`` (never parsed, so
    OpenSSL need not be able to load them), ServerHelloDone, cut into records of
    ``record_size``; then waits for the client to leave. ``version`` 0x0300 answers as an
    SSLv3 server, which OpenSSL 3 cannot speak."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        offered = client_ciphers(read_client_hello(conn))
        cipher = next(c for c in PREFERRED if c in offered)
        flight = server_hello(cipher, version) + certificate_message(ders) + SERVER_HELLO_DONE
        conn.sendall(records(0x16, flight, record_size))
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass

    return TcpServer(handle)


HELLO_REQUEST_RECORD = records(0x16, handshake_message(0, b""))


def tls_flood_server(kind: str, seconds: float = FLOOD_SECONDS) -> TcpServer:
    """Answers a ClientHello with an endless stream of TLS records.

    ``hello-requests``: HelloRequest records, which a client mid-handshake skips (RFC 5246
    7.4.1.1), so only a byte bound ends them; ``certificate-fragments``: a ServerHello and
    a Certificate header claiming 16 MiB, then its fragments without end; ``garbage``: a
    ServerHello, then records of noise.
    """

    def handle(conn: socket.socket) -> None:
        conn.settimeout(seconds)
        offered = client_ciphers(read_client_hello(conn))
        cipher = next(c for c in PREFERRED if c in offered)
        if kind == "hello-requests":
            block = HELLO_REQUEST_RECORD * (_BLOCK // len(HELLO_REQUEST_RECORD))
        elif kind == "certificate-fragments":
            head = server_hello(cipher) + b"\x0b\xff\xff\xff\xff\xff\xfc"
            conn.sendall(records(0x16, head))
            block = records(0x16, b"\x00" * _BLOCK)
        else:
            conn.sendall(records(0x16, server_hello(cipher)))
            block = records(0x16, os.urandom(_BLOCK), 1000)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            conn.sendall(block)

    return TcpServer(handle)
