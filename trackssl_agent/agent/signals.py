"""Stop signals for ``run``: SIGTERM and SIGINT (Ctrl-C; Ctrl-Break too on Windows) ask for
one clean stop; the same signals at least ``SECOND_AFTER`` seconds later exit at once.

Two facts shape this module. A Python signal handler runs in the main thread between two
bytecodes, possibly while that thread holds a lock the handler would need: ``Event.set()``
inside it deadlocks when the main thread is inside ``stop.wait()`` at that moment, and a log
call can re-enter a half-done write. So the handler only records the signal number in a
list; Python's C-level handler also writes it to a wakeup socket (``signal.set_wakeup_fd``),
and a watcher thread reading that socket sets the stop event, logs, and decides about an
immediate exit. And Ctrl-C in a terminal, ``systemctl stop`` and ``docker stop`` behind an
init signal a whole process group, where the single-file build's bootloader (our parent)
passes on the signal it got to the agent, which already got its own copy: those copies
arrive microseconds apart and must count as one request.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType

from trackssl_agent.log import LOGGER_NAME, get_logger
from trackssl_agent.render.report import signal_exit_code

logger = get_logger(__name__)

SECOND_AFTER = 2.0
"""Seconds after the first stop signal from which another one means "exit now". Copies of
one request (process group plus the bootloader's forward) arrive well within it."""
POLL = 0.5
"""Longest wait of the watcher between looks at the handler's record (Windows may drop a
wakeup byte when the socket is full; nothing else relies on this poll)."""
_WAKE = b"\0"  # no signal has number 0: the context's own "wake up and leave" byte


def stop_signals() -> list[signal.Signals]:
    """The signals that stop ``run`` on this platform."""
    found = [signal.SIGTERM, signal.SIGINT]
    brk = getattr(signal, "SIGBREAK", None)  # Windows only: Ctrl-Break and service wrappers
    if brk is not None:
        found.append(brk)
    return found


class Verdict(enum.Enum):
    """What one received stop signal means."""

    STOP = "stop"
    """The first: stop cleanly."""
    SAME = "same"
    """Within ``SECOND_AFTER`` of the first: another copy of the same request."""
    EXIT = "exit"
    """Later than that: the operator insists, exit now."""


class StopRequests:
    """Turns the stop signals one process receives into one request and maybe an exit."""

    def __init__(self, *, second_after: float = SECOND_AFTER) -> None:
        self.second_after = second_after
        self.first: float | None = None
        """When (monotonic seconds) the first stop signal was seen; None before it."""

    def receive(self, at: float) -> Verdict:
        """The meaning of a stop signal seen at monotonic time ``at``."""
        if self.first is None:
            self.first = at
            return Verdict.STOP
        return Verdict.EXIT if at - self.first >= self.second_after else Verdict.SAME


def _flush_logs() -> None:
    """Flush the agent's log handlers; one that cannot (its stream closed, its disk full)
    must not keep the process from exiting."""
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        with suppress(Exception):
            handler.flush()


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class _Watcher:
    """The thread that turns recorded signals into the stop event, log lines and an exit."""

    def __init__(
        self,
        stop: threading.Event,
        requests: StopRequests,
        *,
        exit_now: Callable[[int], object],
        clock: Callable[[], float],
        announce: bool = True,
    ) -> None:
        self.stop = stop
        self.announce = announce
        """Whether this process says what a stop signal means (info and warning lines),
        or only notes it at debug level because another process says it."""
        self.requests = requests
        self.exit_now = exit_now
        self.clock = clock
        self.recorded: list[int] = []
        """Signal numbers, appended by the handler (list.append takes no lock we can see)."""
        self.closed = threading.Event()
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)  # set_wakeup_fd requires it
        self.use_wakeup = False
        self.thread = threading.Thread(target=self.watch, name="signal-watch", daemon=True)

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        """The Python-level signal handler: only this (see the module docstring)."""
        self.recorded.append(signum)

    def watch(self) -> None:
        """Wait for signals on the wakeup socket (or poll the record) until closed."""
        acted = 0
        while not self.closed.is_set():
            try:
                ready, _, _ = select.select([self.reader], [], [], POLL)
                data = self.reader.recv(256) if ready else b""
            except BlockingIOError:
                data = b""
            except OSError:  # the socket was closed under us: the context is leaving
                return
            if self.closed.is_set():
                return
            # One byte per signal from the C-level handler; bytes read together arrived
            # together and get one time stamp, which is what makes copies one request.
            signums = [byte for byte in data if byte] if self.use_wakeup else []
            if not signums and len(self.recorded) > acted:
                # The handler saw a signal the wakeup socket did not carry (or there is no
                # wakeup socket). It can lag the socket but never lead it otherwise.
                signums = self.recorded[acted:]
            acted += len(signums)
            for signum in signums:
                self.act(signum)

    def act(self, signum: int) -> None:
        """Stop, note a copy, or exit now, as the request so far says."""
        verdict = self.requests.receive(self.clock())
        name = _name(signum)
        after = self.requests.second_after
        if verdict is Verdict.STOP:
            self.stop.set()
            logger.log(
                logging.INFO if self.announce else logging.DEBUG,
                "received %s: stopping; no new probes, the probes in flight end by their "
                "deadline and undelivered results go to the outbox; send it again %gs or "
                "more later to exit at once",
                name,
                after,
                extra={"fields": {"event": "stop", "signal": name}},
            )
        elif verdict is Verdict.SAME:
            logger.debug(
                "received %s again within %gs: the same stop request (a process group and "
                "the single-file launcher each pass it on)",
                name,
                after,
            )
        else:
            try:
                logger.log(
                    logging.WARNING if self.announce else logging.DEBUG,
                    "received %s again: exiting now; the outbox keeps undelivered results",
                    name,
                    extra={"fields": {"event": "exit_now", "signal": name}},
                )
                _flush_logs()
            finally:  # the operator insists: nothing a log handler does may prevent the exit
                self.exit_now(signal_exit_code(signum))

    def close(self) -> None:
        """End the thread and free the socket pair."""
        self.closed.set()
        with suppress(OSError):  # full: the watcher wakes anyway and sees ``closed``
            self.writer.send(_WAKE)
        self.thread.join(timeout=POLL * 4)
        self.reader.close()
        self.writer.close()


@contextmanager
def stopping_on_signals(
    stop: threading.Event,
    *,
    exit_now: Callable[[int], object] = os._exit,
    second_after: float = SECOND_AFTER,
    clock: Callable[[], float] = time.monotonic,
    announce: bool = True,
) -> Iterator[None]:
    """While inside, a stop signal sets ``stop``; one ``second_after`` seconds or more after
    the first calls ``exit_now(report.signal_exit_code(signum))`` (128 + signum).

    The immediate exit skips nothing that matters: results enter the outbox before their
    post is attempted, and a lock left by a dead process is taken over. On leaving after a
    stop signal, the stop signals stay ignored for the rest of the process: a late copy of
    the request must not kill the process with the default action (or raise
    KeyboardInterrupt) while it finishes its clean stop. Without a stop signal the previous
    handlers come back. ``announce=False`` (``run``'s cycle child, which gets Ctrl-C with
    the agent) logs the signals at debug level only: the agent says it, once.
    """
    if threading.current_thread() is not threading.main_thread():
        # Python only lets the main thread install handlers (e.g. an embedding host).
        yield
        return
    requests = StopRequests(second_after=second_after)
    watcher = _Watcher(stop, requests, exit_now=exit_now, clock=clock, announce=announce)
    previous = {sig: signal.signal(sig, watcher.handler) for sig in stop_signals()}
    old_wakeup = -1
    try:
        old_wakeup = signal.set_wakeup_fd(watcher.writer.fileno(), warn_on_full_buffer=False)
        watcher.use_wakeup = True
    except (ValueError, OSError):  # no wakeup socket here: the watcher polls the record
        pass
    watcher.thread.start()
    try:
        yield
    finally:
        stopped = stop.is_set() or requests.first is not None or bool(watcher.recorded)
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_IGN if stopped else old)
        if watcher.use_wakeup:
            signal.set_wakeup_fd(old_wakeup)
        watcher.close()
