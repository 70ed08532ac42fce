"""Target -> ProbeResult within one deadline: resolve, connect, STARTTLS, handshake, close.

The engine uses blocking sockets in a bounded thread pool rather than an event loop:
OpenSSL releases the GIL inside the handshake so threads scale, every blocking step is
bounded by the target's single Deadline, and the chain must be read from the TLS object
even when the handshake fails, which a MemoryBIO handshake driven by hand makes easy.
"""

from __future__ import annotations

import contextlib
import errno
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from trackssl_agent import starttls, tls_records
from trackssl_agent.results import ErrorKind, ProbeError, ProbeResult
from trackssl_agent.targets import Target
from trackssl_agent.transport import Conn, Deadline, DialogueError, RecordIO, printable

AddrInfo = tuple[Any, ...]
Allow = Callable[[Target, str], bool]

_OP_LEGACY_SERVER_CONNECT = 0x4  # named in ssl only from Python 3.12
_ENCODING_DER = 2  # _ssl.ENCODING_DER, not re-exported by ssl on 3.11
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}
_TLS_RECORD_TYPES = {0x14, 0x15, 0x16, 0x17}


@dataclass(frozen=True)
class ProbeSettings:
    """How to probe: the same for every target of one command."""

    timeout: float = 10.0
    """One deadline per target for DNS, connect, STARTTLS and handshake."""
    family: socket.AddressFamily = socket.AF_UNSPEC
    """AF_INET for ``-4``, AF_INET6 for ``-6``."""
    servername: str | None = None
    """SNI override (``--servername``); None sends the host name, or nothing for IPs."""
    allow: Allow | None = None
    """Decides per resolved address whether the target may be contacted."""


class _Failure(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.error = ProbeError(kind, message)


@lru_cache(maxsize=1)
def client_context() -> ssl.SSLContext:
    """One permissive client context, built once: it must reach every server a network holds.

    No verification (the cloud analyses the chain), every protocol version and cipher
    OpenSSL still has (SECLEVEL 0 for SHA-1, RSA-1024 and TLS 1.0/1.1), and servers
    without secure renegotiation (RFC 5746).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.options |= _OP_LEGACY_SERVER_CONNECT
    return context


def resolve(
    target: Target,
    family: int,
    deadline: Deadline,
    getaddrinfo: Callable[..., list[AddrInfo]] = socket.getaddrinfo,
) -> list[AddrInfo]:
    """getaddrinfo bounded by the deadline: it ignores socket timeouts, so names resolve
    in a daemon thread that is abandoned on expiry (it cannot be cancelled)."""
    if target.is_ip:
        return socket.getaddrinfo(
            target.host, target.port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
        )
    box: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            box["result"] = getaddrinfo(target.host, target.port, family, socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name="resolve", daemon=True).start()
    if not done.wait(deadline.remaining()):
        raise _Failure(
            ErrorKind.DNS,
            f"DNS lookup of {target.host} did not answer within {deadline.seconds:g} s; "
            "check the resolver this host uses",
        )
    if "error" in box:
        raise box["error"]
    result: list[AddrInfo] = box["result"]
    return result


def _connect(addresses: list[AddrInfo], deadline: Deadline) -> tuple[socket.socket, str]:
    """Try each address in turn; each gets an equal share of the time left."""
    last: OSError | None = None
    for index, (family, kind, proto, _name, sockaddr) in enumerate(addresses):
        share = deadline.remaining() / (len(addresses) - index)
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(share)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock, str(sockaddr[0])
    assert last is not None
    raise last


@dataclass(frozen=True)
class _Handshake:
    chain: tuple[bytes, ...]
    version: str | None
    cipher: str | None
    warning: str | None


def presented_chain(tls: ssl.SSLObject) -> tuple[bytes, ...]:
    """Every certificate the server sent, leaf first, as DER; works after a failed handshake."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+: a list of DER bytes
        return tuple(bytes(der) for der in (public() or []))
    inner = tls._sslobj  # type: ignore[attr-defined]
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


class HandshakeFailure(Exception):
    """The handshake failed in a way OpenSSL's own reason would not explain."""


class _Flooded(Exception):
    """More than MAX_HANDSHAKE bytes arrived without the handshake completing."""


def handshake(io: RecordIO, context: ssl.SSLContext, servername: str | None) -> _Handshake:
    """Drive a client handshake over ``io`` by hand so the chain survives a failure.

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
                    raise _Flooded from None
                incoming.write(data)
        # The client Finished of TLS 1.3 belongs to the handshake; nothing is sent after it.
        with contextlib.suppress(OSError):
            _flush(outgoing, io)
        cipher = tls.cipher()
        return _Handshake(presented_chain(tls), tls.version(), cipher[0] if cipher else None, None)
    except (OSError, ssl.SSLError, _Flooded) as exc:
        return _after_failure(exc, tls, b"".join(received))


def _after_failure(exc: BaseException, tls: ssl.SSLObject, received: bytes) -> _Handshake:
    """The chain of a failed handshake if any was presented, else a classified error."""
    reason = _handshake_reason(exc)
    chain = presented_chain(tls)
    if chain:
        return _Handshake(
            chain, tls.version(), None, f"the handshake broke off after the certificates: {reason}"
        )
    flight = tls_records.read_server_flight(received)
    if flight.chain:
        return _Handshake(
            flight.chain,
            flight.version,
            None,
            f"the handshake failed ({reason}); the chain was read from the Certificate "
            "message the server sent in the clear",
        )
    if received and received[0] not in _TLS_RECORD_TYPES:
        raise _Failure(
            ErrorKind.NOT_TLS,
            f"the server answered the TLS ClientHello in plaintext ({printable(received, 60)!r}); "
            "it may need STARTTLS (--starttls) or speak another protocol on this port",
        ) from exc
    if flight.version == "TLSv1.3" and isinstance(exc, ssl.SSLError) and "asn1" in str(exc).lower():
        raise HandshakeFailure(
            f"the server's certificate could not be decoded ({reason}); under TLS 1.3 it is "
            "sent encrypted, so no chain can be reported: check the certificate on the server"
        ) from exc
    if isinstance(exc, _Flooded):
        raise HandshakeFailure(
            f"the server sent more than {MAX_HANDSHAKE // 1024} KiB without completing the "
            "handshake"
        ) from exc
    raise exc


_SSL_NOISE = re.compile(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$")


def _handshake_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, ssl.SSLError) and len(exc.args) > 1:
        # Common reasons (``ASN1 lib``) carry no reason code: "[SSL] ASN1 lib (_ssl.c:1006)".
        return _SSL_NOISE.sub("", str(exc.args[1])).lower() or "unknown reason"
    if isinstance(exc, TimeoutError):
        return "no reply before the deadline"
    if isinstance(exc, _Flooded):
        return f"the server sent more than {MAX_HANDSHAKE // 1024} KiB"
    return str(exc) or type(exc).__name__


def classify(exc: BaseException, stage: str, target: Target) -> ProbeError:
    """Turn an exception at ``stage`` into an error kind and a message to act on."""
    where = target.endpoint
    if isinstance(exc, _Failure):
        return exc.error
    if isinstance(exc, DialogueError):
        return ProbeError(ErrorKind.STARTTLS, f"{where}: {exc}")
    if isinstance(exc, HandshakeFailure):
        return ProbeError(ErrorKind.HANDSHAKE, f"{where}: TLS handshake failed: {exc}")
    if isinstance(exc, socket.gaierror):
        return ProbeError(
            ErrorKind.DNS, f"cannot resolve {target.host}: {exc.strerror}; check the name and DNS"
        )
    if isinstance(exc, TimeoutError):
        return ProbeError(
            ErrorKind.TIMEOUT, f"{where}: no answer during {stage} before the deadline"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError(
            ErrorKind.REFUSED,
            f"{where}: connection refused; is the service running on this port?",
        )
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return ProbeError(
            ErrorKind.RESET, f"{where}: the server reset the connection during {stage}"
        )
    if isinstance(exc, ssl.SSLEOFError) or (isinstance(exc, ssl.SSLError) and "EOF" in str(exc)):
        return ProbeError(
            ErrorKind.HANDSHAKE,
            f"{where}: the server closed the connection during the TLS handshake; "
            "it may not speak TLS on this port, or it needs STARTTLS",
        )
    if isinstance(exc, ssl.SSLError):
        return ProbeError(
            ErrorKind.HANDSHAKE, f"{where}: TLS handshake failed: {_handshake_reason(exc)}"
        )
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return ProbeError(
            ErrorKind.UNREACHABLE, f"{where}: {exc.strerror}; check routing and firewalls"
        )
    if isinstance(exc, OSError):
        return ProbeError(ErrorKind.UNREACHABLE, f"{where}: {exc.strerror or exc}")
    return ProbeError(ErrorKind.HANDSHAKE, f"{where}: {type(exc).__name__}: {exc}")


def probe(
    target: Target,
    settings: ProbeSettings,
    *,
    context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.monotonic,
    getaddrinfo: Callable[..., list[AddrInfo]] = socket.getaddrinfo,
) -> ProbeResult:
    """Probe one target; never raises for anything the network or the server does."""
    context = context or client_context()
    started = clock()
    probed_at = datetime.now(UTC)
    deadline = Deadline(settings.timeout, clock)
    servername = settings.servername if settings.servername is not None else target.sni_name
    address: str | None = None
    stage = "the DNS lookup"
    try:
        addresses = resolve(target, settings.family, deadline, getaddrinfo)
        if settings.allow is not None:
            addresses = [a for a in addresses if settings.allow(target, str(a[4][0]))]
            if not addresses:
                raise _Failure(
                    ErrorKind.DENIED,
                    f"{target.endpoint} is outside TRACKSSL_ALLOW; it was not contacted",
                )
        stage = "connect"
        sock, address = _connect(addresses, deadline)
        try:
            conn = Conn(sock, deadline)
            io: RecordIO = conn
            if target.starttls is not None:
                stage = f"the {target.starttls.value} STARTTLS dialogue"
                io = starttls.negotiate(target.starttls, conn, servername or target.host)
            stage = "the TLS handshake"
            result = handshake(io, context, servername)
        finally:
            sock.close()
    except Exception as exc:
        return ProbeResult(
            target=target, servername=servername, address=address, probed_at=probed_at,
            elapsed_ms=(clock() - started) * 1000, error=classify(exc, stage, target),
        )  # fmt: skip
    return ProbeResult(
        target=target,
        servername=servername,
        address=address,
        probed_at=probed_at,
        elapsed_ms=(clock() - started) * 1000,
        chain=result.chain,
        tls_version=result.version,
        cipher=result.cipher,
        warnings=(result.warning,) if result.warning else (),
    )


def probe_many(
    targets: Iterable[Target],
    settings: ProbeSettings,
    *,
    concurrency: int = 64,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, ProbeResult]]:
    """Probe targets concurrently; yield ``(input index, result)`` as each completes.

    At most ``concurrency`` probes are in flight and nothing is kept for finished ones, so
    memory does not grow with the number of targets. Once ``stop`` is set no new probe
    starts; those in flight end by their deadline.
    """
    context = client_context()
    pending: set[Future[tuple[int, ProbeResult]]] = set()

    def run(index: int, target: Target) -> tuple[int, ProbeResult]:
        return index, probe(target, settings, context=context)

    source = iter(enumerate(targets))
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="probe") as pool:
        exhausted = False
        while True:
            while not exhausted and len(pending) < concurrency and not (stop and stop.is_set()):
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                pending.add(pool.submit(run, *item))
            if not pending:
                return
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
