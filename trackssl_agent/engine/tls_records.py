"""The server's first flight read from raw TLS records: its version and Certificate message.

OpenSSL drops a chain it cannot decode (invalid UTF-8 in a name fails with ``ASN1 lib``),
yet under TLS 1.2 and older the server sent that chain in the clear. This module reads it
from the bytes as received, so retrieval does not depend on any parser accepting the
certificates. Pure and bounded: any input gives a result, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_HANDSHAKE = 0x16
_SERVER_HELLO = 2
_CERTIFICATE = 11
_SUPPORTED_VERSIONS = 0x002B
VERSIONS = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}


@dataclass(frozen=True)
class ServerFlight:
    """What the plaintext part of the server's answer shows."""

    version: str | None
    """The version the ServerHello chose (``TLSv1.3`` from supported_versions), or None."""
    chain: tuple[bytes, ...]
    """DER of each certificate of a cleartext Certificate message, leaf first; () if none."""


class _Short(Exception):
    """A length points past the end of its container."""


class _Reader:
    """Cursor over bytes; every read is bounds-checked and raises _Short past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise _Short
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.number(length_size))

    @property
    def left(self) -> int:
        return len(self.data) - self.at


def handshake_stream(data: bytes) -> bytes:
    """The concatenated payloads of the leading handshake records.

    Messages may span records and records may hold several messages (RFC 5246 6.2.1), so
    they are joined first. Reading stops at the first other record (ChangeCipherSpec: what
    follows is encrypted; an alert; TLS 1.3 application data) or an incomplete one.
    """
    parts: list[bytes] = []
    at = 0
    while at + 5 <= len(data):
        if data[at] != _HANDSHAKE or data[at + 1] != 3:
            break
        length = int.from_bytes(data[at + 3 : at + 5], "big")
        body = data[at + 5 : at + 5 + length]
        parts.append(body)
        if len(body) < length:
            break
        at += 5 + length
    return b"".join(parts)


def _server_hello_version(body: bytes) -> str | None:
    reader = _Reader(body)
    legacy = reader.number(2)
    reader.take(32)  # random
    reader.vector(1)  # session id
    reader.take(3)  # cipher suite, compression method
    chosen = legacy
    if reader.left >= 2:
        extensions = _Reader(reader.vector(2))
        while extensions.left >= 4:
            kind = extensions.number(2)
            value = extensions.vector(2)
            if kind == _SUPPORTED_VERSIONS and len(value) == 2:
                chosen = int.from_bytes(value, "big")
    return VERSIONS.get(chosen, f"0x{chosen:04x}")


def _certificates(body: bytes) -> tuple[bytes, ...]:
    """RFC 5246 7.4.2: a 24-bit length, then each certificate with a 24-bit length.

    Every entry must at least open a DER SEQUENCE: anything else is noise, not a chain.
    """
    reader = _Reader(_Reader(body).vector(3))
    chain: list[bytes] = []
    while reader.left:
        der = reader.vector(3)
        if not der.startswith(b"\x30"):
            return ()
        chain.append(der)
    return tuple(chain)


def _parsed(parse: Callable[[bytes], T], body: bytes) -> T | None:
    try:
        return parse(body)
    except _Short:
        return None


def read_server_flight(data: bytes) -> ServerFlight:
    """The version and cleartext chain in ``data``, the bytes a server sent first."""
    stream = _Reader(handshake_stream(data))
    version: str | None = None
    chain: tuple[bytes, ...] = ()
    while stream.left >= 4:
        kind = stream.number(1)
        length = stream.number(3)
        if length > stream.left:
            break  # the flight was cut off inside this message
        body = stream.take(length)
        if kind == _SERVER_HELLO:
            version = _parsed(_server_hello_version, body)
        elif kind == _CERTIFICATE and version != "TLSv1.3" and not chain:
            chain = _parsed(_certificates, body) or ()
    return ServerFlight(version, chain)
