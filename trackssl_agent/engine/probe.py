"""Target -> ProbeResult within one deadline: resolve, connect, STARTTLS, handshake, close.

Each stage returns its value or its own ProbeError, made where the failure happens from
the errors that stage can meet; the first error ends the probe.

The engine uses blocking sockets in a bounded thread pool rather than an event loop:
OpenSSL releases the GIL inside the handshake so threads scale, every blocking step is
bounded by the target's single Deadline, and the chain must be read from the TLS object
even when the handshake fails, which a MemoryBIO handshake driven by hand makes easy.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from trackssl_agent.engine import socket_handshake, starttls
from trackssl_agent.engine.dialogues import DIALOGUES
from trackssl_agent.engine.handshake import (
    Handshake,
    HandshakeFailure,
    NotTls,
    after_failure,
    handshake,
)
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.engine.results import ErrorKind, ProbeError, ProbeResult
from trackssl_agent.engine.socket_handshake import handshake_over_socket
from trackssl_agent.engine.targets import Target
from trackssl_agent.engine.transport import Conn, Deadline, DialogueError, RecordIO
from trackssl_agent.errors import UsageError
from trackssl_agent.log import get_logger

logger = get_logger(__name__)

AddrInfo = tuple[Any, ...]
Allow = Callable[[Target, str], bool]

_OP_LEGACY_SERVER_CONNECT = 0x4  # named in ssl only from Python 3.12
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}
_FAST = socket_handshake.available()
"""Whether handshakes take the socket path (in C) first; the memory-BIO reader otherwise."""


@dataclass(frozen=True)
class ProbeSettings:
    """How to probe: the same for every target of one command."""

    timeout: float
    """One deadline per target for DNS, connect, STARTTLS and handshake (the caller's: the
    engine takes values, and the default is the settings table's)."""
    family: socket.AddressFamily = socket.AF_UNSPEC
    """AF_INET for ``-4``, AF_INET6 for ``-6``."""
    servername: str | None = None
    """SNI override (``--servername``); None sends the host name, or nothing for IPs."""
    allow: Allow | None = None
    """Decides per resolved address whether the target may be contacted."""


def address_family(*, ipv4: bool, ipv6: bool) -> socket.AddressFamily:
    """The socket family for ``-4`` / ``-6``."""
    if ipv4 and ipv6:
        raise UsageError("-4 and -6 exclude each other")
    if ipv4:
        return socket.AF_INET
    if ipv6:
        return socket.AF_INET6
    return socket.AF_UNSPEC


_FLAGS = {socket.AF_INET: ("-4", 4), socket.AF_INET6: ("-6", 6)}


def wrong_family(
    family: int, text: str, version: int, *, noun: str = "address", verb: str = "probe"
) -> str | None:
    """What ``-4``/``-6`` (``family``) against ``text``, an IPv``version`` address or network
    given literally, means, or None when they agree: one wording for ``probe``, local mode,
    the API's domains and ``discover``."""
    flag = _FLAGS.get(socket.AddressFamily(family))
    if flag is None or flag[1] == version:
        return None
    return f"{flag[0]} given but {text} is an IPv{version} {noun}; drop {flag[0]} to {verb} it"


def literal_version(target: Target) -> int:
    """4 or 6 for an IP literal target (a scoped ``fe80::1%eth0`` included)."""
    return 6 if ":" in target.host else 4


@lru_cache(maxsize=1)
def client_context() -> ssl.SSLContext:
    """One permissive client context, built once: it must reach every server a network holds.

    No verification (the cloud analyses the chain), every protocol version and cipher
    OpenSSL still has (SECLEVEL 0 for SHA-1, RSA-1024 and TLS 1.0/1.1), and servers
    without secure renegotiation (RFC 5746). No session ticket is asked for: a probe never
    resumes, and a TLS 1.2 server then mints and encrypts none (6 % of nginx's CPU for a
    handshake, measured).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.options |= _OP_LEGACY_SERVER_CONNECT | ssl.OP_NO_TICKET
    return context


def resolve(
    target: Target,
    family: int,
    deadline: Deadline,
    getaddrinfo: Callable[..., list[AddrInfo]] = socket.getaddrinfo,
) -> list[AddrInfo] | ProbeError:
    """The resolve stage: the target's addresses, or why there are none."""
    try:
        if target.is_ip:
            mismatch = wrong_family(family, target.host, literal_version(target))
            if mismatch is not None:  # the resolve stage's kind, but not a lookup's words
                return ProbeError(ErrorKind.DNS, mismatch)
            return socket.getaddrinfo(
                target.host, target.port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
            )
        addresses = _lookup(target, family, deadline, getaddrinfo)
    except socket.gaierror as exc:
        return _not_resolved(target, family, deadline, getaddrinfo, exc)
    except OSError as exc:  # the deadline passed before the lookup began, or another OSError
        return _lost(exc, target, "the DNS lookup")
    if addresses is None:
        return ProbeError(
            ErrorKind.DNS,
            f"DNS lookup of {target.host} did not answer within {deadline.seconds:g} s; "
            "check the resolver this host uses",
        )
    return addresses


def _not_resolved(
    target: Target,
    family: int,
    deadline: Deadline,
    getaddrinfo: Callable[..., list[AddrInfo]],
    exc: socket.gaierror,
) -> ProbeError:
    """Why ``target``'s name gave no address. Under ``-4``/``-6`` a name that has addresses
    of the other family only is said to be just that (one more lookup, on failure only),
    not a DNS failure."""
    flag = _FLAGS.get(socket.AddressFamily(family))
    if flag is not None:
        try:
            other = _lookup(target, socket.AF_UNSPEC, deadline, getaddrinfo)
        except OSError:
            other = None
        if other:
            return ProbeError(
                ErrorKind.DNS,
                f"{flag[0]} given but {target.host} has no IPv{flag[1]} address, only "
                f"IPv{10 - flag[1]}; drop {flag[0]} to probe it",
            )
    return ProbeError(
        ErrorKind.DNS, f"cannot resolve {target.host}: {exc.strerror}; check the name and DNS"
    )


def _lookup(
    target: Target, family: int, deadline: Deadline, getaddrinfo: Callable[..., list[AddrInfo]]
) -> list[AddrInfo] | None:
    """getaddrinfo bounded by the deadline, None if it did not answer in time: it ignores
    socket timeouts, so the name resolves in a daemon thread that is abandoned on expiry
    (it cannot be cancelled)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            box["result"] = getaddrinfo(target.host, target.port, family, socket.SOCK_STREAM)
        except Exception as exc:  # handed to the caller: raised there, in the probe's thread
            box["error"] = exc
        finally:
            done.set()

    left = deadline.remaining()  # first: a lookup that cannot be waited for is not started
    threading.Thread(target=lookup, name="resolve", daemon=True).start()
    if not done.wait(left):
        return None
    if "error" in box:
        raise box["error"]
    result: list[AddrInfo] = box["result"]
    return result


def _allowed(
    target: Target, addresses: list[AddrInfo], allow: Allow
) -> list[AddrInfo] | ProbeError:
    """The addresses ``allow`` lets the probe contact, or `denied` if none is left."""
    permitted = [a for a in addresses if allow(target, str(a[4][0]))]
    if not permitted:
        return ProbeError(
            ErrorKind.DENIED, f"{target.endpoint} is outside TRACKSSL_ALLOW; it was not contacted"
        )
    return permitted


def connect(
    target: Target, addresses: list[AddrInfo], deadline: Deadline
) -> tuple[socket.socket, str] | ProbeError:
    """The connect stage: a connected socket and the address it reached, or why not."""
    try:
        return _connect(addresses, deadline)
    except ConnectionRefusedError:
        return ProbeError(
            ErrorKind.REFUSED,
            f"{target.endpoint}: connection refused; is the service running on this port?",
        )
    except OSError as exc:
        return _lost(exc, target, "connect")


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
    # getaddrinfo never returns an empty list, but a refused or filtered list may be.
    raise last or OSError(errno.EADDRNOTAVAIL, "no address to connect to")


def start_tls(target: Target, protocol: Protocol, conn: Conn, host: str) -> RecordIO | ProbeError:
    """The STARTTLS stage: the pipe the handshake runs over, or why the dialogue failed."""
    try:
        return starttls.negotiate(DIALOGUES[protocol], conn, host)
    except DialogueError as exc:
        return ProbeError(ErrorKind.STARTTLS, f"{target.endpoint}: {exc}")
    except OSError as exc:
        return _lost(exc, target, f"the {protocol.value} STARTTLS dialogue")


def shake_hands(
    target: Target, io: RecordIO, context: ssl.SSLContext, servername: str | None
) -> Handshake | ProbeError:
    """The handshake stage: the chain (even from a failed handshake), or why none came."""
    try:
        return handshake(io, context, servername)
    except NotTls as exc:
        return ProbeError(ErrorKind.NOT_TLS, str(exc))
    except HandshakeFailure as exc:
        return ProbeError(ErrorKind.HANDSHAKE, f"{target.endpoint}: {exc}")
    except OSError as exc:
        return _lost(exc, target, "the TLS handshake")


@dataclass(frozen=True)
class _LookAgain:
    """The socket path asks for the memory-BIO reader; ``first`` is what it alone saw."""

    first: ProbeError


def shake_hands_over_socket(
    target: Target,
    sock: socket.socket,
    deadline: Deadline,
    context: ssl.SSLContext,
    servername: str | None,
) -> Handshake | ProbeError | _LookAgain:
    """The handshake stage on the socket path, or a request for the memory-BIO reader."""
    try:
        return handshake_over_socket(sock, deadline, context, servername)
    except socket_handshake.Fallback as fallback:
        return _LookAgain(_settled(target, fallback.first))
    except HandshakeFailure as exc:
        return ProbeError(ErrorKind.HANDSHAKE, f"{target.endpoint}: {exc}")
    except OSError as exc:
        return _lost(exc, target, "the TLS handshake")


def _settled(target: Target, exc: BaseException) -> ProbeError:
    """The error a failed handshake is without the bytes the server sent."""
    try:
        after_failure(exc, (), None, b"")
    except HandshakeFailure as failure:
        return ProbeError(ErrorKind.HANDSHAKE, f"{target.endpoint}: {failure}")
    except OSError as lost:
        return _lost(lost, target, "the TLS handshake")
    return ProbeError(ErrorKind.HANDSHAKE, f"{target.endpoint}: TLS handshake failed")


def _lost(exc: OSError, target: Target, during: str) -> ProbeError:
    """What the connection's own OSError means, ``during`` naming the stage that got it."""
    where = target.endpoint
    if isinstance(exc, TimeoutError):
        return ProbeError(
            ErrorKind.TIMEOUT, f"{where}: no answer during {during} before the deadline"
        )
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return ProbeError(
            ErrorKind.RESET, f"{where}: the server reset the connection during {during}"
        )
    if exc.errno in _UNREACHABLE:
        return ProbeError(
            ErrorKind.UNREACHABLE, f"{where}: {exc.strerror}; check routing and firewalls"
        )
    return ProbeError(ErrorKind.UNREACHABLE, f"{where}: {exc.strerror or exc}")


def _attempt(
    target: Target,
    settings: ProbeSettings,
    deadline: Deadline,
    context: ssl.SSLContext,
    getaddrinfo: Callable[..., list[AddrInfo]],
) -> tuple[str | None, Handshake | ProbeError]:
    """Run the stages in turn; the first that fails ends the attempt with its own error.
    Returns the address connected to (None before connect) and the outcome.

    The handshake runs in C over the socket (``socket_handshake``) where it can; when that
    fails in a way only the memory-BIO reader sees through, the target is connected to
    again (its dialogue too) and read that way, within the same deadline."""
    addresses = resolve(target, settings.family, deadline, getaddrinfo)
    if not isinstance(addresses, ProbeError) and settings.allow is not None:
        addresses = _allowed(target, addresses, settings.allow)
    if isinstance(addresses, ProbeError):
        return None, addresses
    address, outcome = _session(target, settings, deadline, context, addresses, fast=_FAST)
    if not isinstance(outcome, _LookAgain):
        return address, outcome
    again, second = _session(target, settings, deadline, context, addresses, fast=False)
    if isinstance(second, _LookAgain):  # the memory-BIO path never asks for another look
        second = second.first
    if isinstance(second, ProbeError) and second.kind is ErrorKind.TIMEOUT:
        return address, outcome.first  # no time was left to look again: what was seen stands
    return again, second


def _session(
    target: Target,
    settings: ProbeSettings,
    deadline: Deadline,
    context: ssl.SSLContext,
    addresses: list[AddrInfo],
    *,
    fast: bool,
) -> tuple[str | None, Handshake | ProbeError | _LookAgain]:
    """Connect, run the dialogue, shake hands (on the socket path when ``fast``, which may
    ask for the memory-BIO reader)."""
    connected = connect(target, addresses, deadline)
    if isinstance(connected, ProbeError):
        return None, connected
    sock, address = connected
    with sock:
        servername = _servername(target, settings)
        conn = Conn(sock, deadline)
        io: RecordIO | ProbeError = conn
        if target.starttls is not None:
            io = start_tls(target, target.starttls, conn, servername or target.host)
        if isinstance(io, ProbeError):
            return address, io
        if fast and io is conn:  # mssql's TLS travels inside TDS packets: memory BIOs only
            return address, shake_hands_over_socket(target, sock, deadline, context, servername)
        return address, shake_hands(target, io, context, servername)


def _servername(target: Target, settings: ProbeSettings) -> str | None:
    """The SNI to send: ``--servername``, else the host name (None for an IP literal)."""
    return settings.servername if settings.servername is not None else target.sni_name


def probe(
    target: Target,
    settings: ProbeSettings,
    *,
    context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.monotonic,
    getaddrinfo: Callable[..., list[AddrInfo]] = socket.getaddrinfo,
) -> ProbeResult:
    """Probe one target; never raises for anything the network or the server does."""
    started = clock()
    probed_at = datetime.now(UTC)
    deadline = Deadline(settings.timeout, clock)
    try:
        address, outcome = _attempt(
            target, settings, deadline, context or client_context(), getaddrinfo
        )
    except Exception as exc:
        # Each stage returns what the network or the server can cause; this is a bug. The
        # target still gets its result (a worker thread dying would drop it), and the
        # traceback goes to the debug log.
        logger.debug("unexpected error probing %s", target.text, exc_info=True)
        address, outcome = (
            None,
            ProbeError(
                ErrorKind.HANDSHAKE,
                f"{target.text}: unexpected {type(exc).__name__} in the probe: {exc}; "
                "rerun with --log-level debug for the traceback and report it",
            ),
        )
    elapsed_ms = (clock() - started) * 1000
    servername = _servername(target, settings)
    if isinstance(outcome, ProbeError):
        return ProbeResult(
            target=target, servername=servername, address=address, probed_at=probed_at,
            elapsed_ms=elapsed_ms, error=outcome,
        )  # fmt: skip
    return ProbeResult(
        target=target,
        servername=servername,
        address=address,
        probed_at=probed_at,
        elapsed_ms=elapsed_ms,
        chain=outcome.chain,
        tls_version=outcome.version,
        cipher=outcome.cipher,
        warnings=(outcome.warning,) if outcome.warning else (),
    )
