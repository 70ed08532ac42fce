"""The TLS handshake driven by hand over a RecordIO, so the chain survives a failure; and
what a failed handshake still tells (the chain sent in the clear, the reason)."""

from __future__ import annotations

import contextlib
import re
import ssl
from dataclasses import dataclass

from trackssl_agent.engine import tls_records
from trackssl_agent.engine.transport import RecordIO, printable

_ENCODING_DER = 2  # _ssl.ENCODING_DER, not re-exported by ssl on 3.11
_TLS_RECORD_TYPES = {0x14, 0x15, 0x16, 0x17}


class NotTls(Exception):
    """The server answered the ClientHello with plaintext; ``str()`` says so."""


class HandshakeFailure(Exception):
    """The TLS handshake failed and no chain was presented; ``str()`` says why, in full."""


@dataclass(frozen=True)
class Handshake:
    """What a handshake got: the chain (even after a failure), version, cipher, a warning."""

    chain: tuple[bytes, ...]
    version: str | None
    cipher: str | None
    warning: str | None


def presented_chain(tls: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """Every certificate the server sent, leaf first, as DER; works after a failed handshake."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+: a list of DER bytes
        return tuple(bytes(der) for der in (public() or []))
    inner = tls._sslobj  # type: ignore[union-attr]
    chain = inner.get_unverified_chain() if inner is not None else None
    return tuple(cert.public_bytes(_ENCODING_DER) for cert in (chain or []))


def _flush(outgoing: ssl.MemoryBIO, io: RecordIO) -> None:
    data = outgoing.read()
    if data:
        io.send(data)


MAX_HANDSHAKE = 1024 * 1024
"""What the server may send before the handshake completes; a real one sends well under
the 100 KiB certificate list OpenSSL accepts. Bounds endless records OpenSSL would skip
(HelloRequest during the handshake) and the CPU they cost."""

_KEPT = 256 * 1024
"""The first bytes of the server's answer kept for reading its Certificate message."""


class Flooded(Exception):
    """More than MAX_HANDSHAKE bytes arrived without the handshake completing."""


def handshake(io: RecordIO, context: ssl.SSLContext, servername: str | None) -> Handshake:
    """Drive a client handshake over ``io`` by hand so the chain survives a failure.

    Raises NotTls or HandshakeFailure when no chain came, or the connection's own OSError
    (a timeout, a reset) for the caller to name.

    The server's bytes are also kept (references to what was received, up to ``_KEPT``):
    when OpenSSL cannot decode the certificates, the Certificate message sent in the clear
    under TLS 1.2 and older still gives the chain.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=servername)
    received: list[bytes] = []
    total = 0
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                _flush(outgoing, io)
                data = io.recv()
                if not data:
                    incoming.write_eof()
                    continue
                if total < _KEPT:
                    received.append(data)
                total += len(data)
                if total > MAX_HANDSHAKE:
                    raise Flooded from None
                incoming.write(data)
        # The client Finished of TLS 1.3 belongs to the handshake; nothing is sent after it.
        with contextlib.suppress(OSError):
            _flush(outgoing, io)
        cipher = tls.cipher()
        return Handshake(presented_chain(tls), tls.version(), cipher[0] if cipher else None, None)
    except (OSError, ssl.SSLError, Flooded) as exc:
        return after_failure(exc, presented_chain(tls), tls.version(), b"".join(received))


def after_failure(
    exc: BaseException, chain: tuple[bytes, ...], version: str | None, received: bytes
) -> Handshake:
    """The chain of a failed handshake if any was presented (``chain``, what OpenSSL kept,
    else the cleartext Certificate message in ``received``), else the typed error for it.

    The TLS errors become NotTls or HandshakeFailure here, where they are caught; what
    the connection itself raised (a timeout, a reset) goes on as the OSError it is.
    """
    reason = handshake_reason(exc)
    if chain:
        return Handshake(
            chain, version, None, f"the handshake broke off after the certificates: {reason}"
        )
    flight = tls_records.read_server_flight(received)
    if flight.chain:
        return Handshake(
            flight.chain,
            flight.version,
            None,
            f"the handshake failed ({reason}); the chain was read from the Certificate "
            "message the server sent in the clear",
        )
    if received and received[0] not in _TLS_RECORD_TYPES:
        raise NotTls(
            f"the server answered the TLS ClientHello in plaintext ({printable(received, 60)!r}); "
            "it may need STARTTLS (--starttls) or speak another protocol on this port",
        ) from exc
    failure = _failure(exc, reason, flight.version)
    if failure is None:
        raise exc
    raise failure from exc


def _failure(exc: BaseException, reason: str, version: str | None) -> HandshakeFailure | None:
    """The HandshakeFailure for a TLS-level error; None for the connection's own errors."""
    if version == "TLSv1.3" and isinstance(exc, ssl.SSLError) and "asn1" in str(exc).lower():
        return HandshakeFailure(
            f"TLS handshake failed: the server's certificate could not be decoded ({reason}); "
            "under TLS 1.3 it is sent encrypted, so no chain can be reported: check the "
            "certificate on the server"
        )
    if isinstance(exc, Flooded):
        return HandshakeFailure(f"TLS handshake failed: {reason} without completing the handshake")
    if isinstance(exc, ssl.SSLEOFError) or (isinstance(exc, ssl.SSLError) and "EOF" in str(exc)):
        return HandshakeFailure(
            "the server closed the connection during the TLS handshake; "
            "it may not speak TLS on this port, or it needs STARTTLS"
        )
    if isinstance(exc, ssl.SSLError):
        return HandshakeFailure(f"TLS handshake failed: {reason}")
    return None


_SSL_NOISE = re.compile(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$")


def handshake_reason(exc: BaseException) -> str:
    """Why a handshake failed, in OpenSSL's words without its codes and file names."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, ssl.SSLError) and len(exc.args) > 1:
        # Common reasons (``ASN1 lib``) carry no reason code: "[SSL] ASN1 lib (_ssl.c:1006)".
        return _SSL_NOISE.sub("", str(exc.args[1])).lower() or "unknown reason"
    if isinstance(exc, TimeoutError):
        return "no reply before the deadline"
    if isinstance(exc, Flooded):
        return f"the server sent more than {MAX_HANDSHAKE // 1024} KiB"
    return str(exc) or type(exc).__name__
