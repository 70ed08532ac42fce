"""The common path of the handshake: OpenSSL drives it over the socket itself, in C.

``SSLSocket.do_handshake`` runs the whole exchange with the GIL released around each step
(the memory-BIO loop of ``handshake`` takes it back for every record), which is most of a
probe's CPU on a busy cycle. The socket's timeout, set to the time left, keeps the deadline
as long as OpenSSL waits for the server; one watchdog thread for every probe keeps it when
OpenSSL never waits (a server streaming records without end) and counts what each
handshake received, so that a flood ends at ``MAX_HANDSHAKE`` bytes as on the other path.

What only the memory-BIO reader can tell (a Certificate message OpenSSL could not decode,
the plaintext a non-TLS server answered, what a flood hid) needs the bytes themselves: when
this path fails after the server sent anything and no chain was kept, ``Fallback`` says to
probe the target again through that reader. The byte count comes from the kernel
(``TCP_INFO``), so this path runs where it can count: Linux.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from trackssl_agent.engine.handshake import (
    MAX_HANDSHAKE,
    Flooded,
    Handshake,
    after_failure,
    presented_chain,
)
from trackssl_agent.engine.transport import Deadline

_TICK = 0.05
"""How often the watchdog looks: a flood or a deadline is acted on within about this."""
_QUIET = 1.0
"""Seconds with nothing to watch after which the watchdog thread ends (one more is started
when needed), so an idle agent keeps no thread for it."""
_TCP_INFO_SIZE = 256
_BYTES_RECEIVED = struct.Struct("=Q")
_BYTES_RECEIVED_AT = 128
"""``tcpi_bytes_received`` in Linux's ``struct tcp_info`` (since Linux 4.1): every byte the
connection received, read or not, so a flood shows before OpenSSL has taken it in."""


class Fallback(Exception):
    """The socket path failed where the memory-BIO reader may see more: probe again there.
    ``first`` is what failed here, for when no time is left for that second look."""

    def __init__(self, first: BaseException) -> None:
        super().__init__(str(first))
        self.first = first


def bytes_received(sock: socket.socket) -> int | None:
    """What the connection has received so far, per the kernel; None where it cannot say."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):  # no TCP_INFO here, or the socket is gone
        return None
    if len(info) < _BYTES_RECEIVED_AT + _BYTES_RECEIVED.size:
        return None  # a kernel older than 4.1
    value: int = _BYTES_RECEIVED.unpack_from(info, _BYTES_RECEIVED_AT)[0]
    return value


def available() -> bool:
    """True where this path can keep the flood budget: the kernel counts received bytes."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "TCP_INFO"):
        return False
    return _counts_bytes()


def _counts_bytes() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # An unconnected TCP socket answers TCP_INFO too, with the full struct.
        return bytes_received(probe) is not None


class Cut(Enum):
    """Why the watchdog shut a handshake's socket down."""

    DEADLINE = "deadline"
    FLOOD = "flood"


@dataclass(eq=False)
class _Watch:
    sock: socket.socket
    started: float
    expires: float
    cut: Cut | None = field(default=None)


class Watchdog:
    """One thread for every handshake in flight on the socket path: it shuts the socket
    down when the deadline has passed (plus a tick: the socket's own timeout normally comes
    first) or when more than ``MAX_HANDSHAKE`` bytes arrived, which ends an OpenSSL call
    that never waits for the network."""

    def __init__(self, tick: float = _TICK, budget: int = MAX_HANDSHAKE) -> None:
        self._tick = tick
        self._budget = budget
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._watches: set[_Watch] = set()
        self._running = False

    def reset(self) -> None:
        """After fork in the child: the thread is gone and the lock may be held."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._watches = set()
        self._running = False

    def watch(self, sock: socket.socket, seconds: float) -> _Watch:
        """Watch ``sock`` for ``seconds`` from now; ``release`` it before closing it."""
        now = time.monotonic()
        watch = _Watch(sock, now, now + seconds)
        with self._lock:
            self._watches.add(watch)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="handshake-watchdog", daemon=True).start()
        return watch

    def release(self, watch: _Watch) -> Cut | None:
        """Stop watching; why the socket was shut down, if it was. Under the lock: the
        watchdog never shuts down a descriptor its owner has closed (and maybe reused)."""
        with self._lock:
            self._watches.discard(watch)
            return watch.cut

    def _run(self) -> None:
        idle_since: float | None = None
        with self._lock:
            while True:
                self._wake.wait(self._tick)
                now = time.monotonic()
                if not self._watches:
                    idle_since = idle_since or now
                    if now - idle_since >= _QUIET:
                        self._running = False
                        return
                    continue
                idle_since = None
                for watch in list(self._watches):
                    cut = self._verdict(watch, now)
                    if cut is not None:
                        watch.cut = cut
                        self._watches.discard(watch)
                        # The plain socket's shutdown: SSLSocket.shutdown would drop the TLS
                        # state the probe thread still reads the chain from.
                        with contextlib.suppress(OSError):
                            socket.socket.shutdown(watch.sock, socket.SHUT_RDWR)

    def _verdict(self, watch: _Watch, now: float) -> Cut | None:
        if now >= watch.expires + self._tick:
            return Cut.DEADLINE
        if now - watch.started < 2 * self._tick:
            return None  # a handshake this young has not had the time to flood anything
        received = bytes_received(watch.sock)
        return Cut.FLOOD if received is not None and received > self._budget else None


WATCHDOG = Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG.reset)


def handshake_over_socket(
    sock: socket.socket,
    deadline: Deadline,
    context: ssl.SSLContext,
    servername: str | None,
    watchdog: Watchdog = WATCHDOG,
) -> Handshake:
    """The client handshake on ``sock`` (connected, nothing unread in Python), in C.

    ``sock`` is taken over and closed. Returns what the memory-BIO path would for a
    success, a chain kept by a failed handshake, or a failure before any byte came;
    raises ``Fallback`` when that path could see more, or the connection's own OSError (a
    timeout, a reset) as it would, or ``HandshakeFailure``.
    """
    tls = context.wrap_socket(sock, server_hostname=servername, do_handshake_on_connect=False)
    with tls:
        tls.settimeout(deadline.remaining())
        watch = watchdog.watch(tls, deadline.remaining())
        try:
            tls.do_handshake()
        except OSError as exc:  # ssl.SSLError included
            cut = watchdog.release(watch)
            return _after_socket_failure(exc, tls, cut)
        watchdog.release(watch)  # a cut after the handshake is done changes nothing
        cipher = tls.cipher()
        return Handshake(presented_chain(tls), tls.version(), cipher[0] if cipher else None, None)


def _after_socket_failure(exc: OSError, tls: ssl.SSLSocket, cut: Cut | None) -> Handshake:
    """A failed handshake, settled as the memory-BIO path would, or ``Fallback``."""
    failure: BaseException = exc
    if cut is Cut.DEADLINE:
        failure = TimeoutError("the deadline passed during the handshake")
    elif cut is Cut.FLOOD:
        failure = Flooded()
    if not isinstance(failure, TimeoutError) and not presented_chain(tls):
        received = bytes_received(tls)
        if received is None or received > 0:
            # The bytes are gone into OpenSSL: only the memory-BIO reader can read them.
            raise Fallback(failure) from exc
    return after_failure(failure, presented_chain(tls), tls.version(), b"")
