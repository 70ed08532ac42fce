"""Stop signals for ``run``: SIGTERM and SIGINT (Ctrl-C and Ctrl-Break on Windows) set a
stop Event for a clean stop; a second signal exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from trackssl_agent.log import LOGGER_NAME, get_logger

logger = get_logger(__name__)


def stop_signals() -> list[signal.Signals]:
    """The signals that stop ``run`` on this platform."""
    found = [signal.SIGTERM, signal.SIGINT]
    brk = getattr(signal, "SIGBREAK", None)  # Windows only: Ctrl-Break and service wrappers
    if brk is not None:
        found.append(brk)
    return found


def _flush_logs() -> None:
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.flush()


@contextmanager
def stopping_on_signals(
    stop: threading.Event, *, exit_now: Callable[[int], object] = os._exit
) -> Iterator[None]:
    """While inside, the first stop signal sets ``stop`` and the second exits at once.

    The immediate exit skips nothing that matters: results enter the outbox before their
    post is attempted, and a lock left by a dead process is taken over. The handlers only
    set events; a watcher thread does the logging, because a log call inside a signal
    handler can re-enter a write the main thread was in the middle of.
    """
    if threading.current_thread() is not threading.main_thread():
        # Python only lets the main thread install handlers (e.g. an embedding host).
        yield
        return
    received: list[int] = []
    notice = threading.Event()
    closed = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()
        notice.set()

    def watch() -> None:
        seen = 0
        while True:
            notice.wait()
            notice.clear()
            if closed.is_set():
                return
            if seen == 0 and received:
                logger.info(
                    "received %s: stopping; no new probes, the probes in flight end by their "
                    "deadline and undelivered results go to the outbox; send it again to exit "
                    "at once",
                    signal.Signals(received[0]).name,
                    extra={"fields": {"event": "stop", "signal": signal.Signals(received[0]).name}},
                )
            seen = len(received)
            if seen >= 2:
                logger.warning(
                    "received %s again: exiting now; the outbox keeps undelivered results",
                    signal.Signals(received[-1]).name,
                    extra={"fields": {"event": "exit_now"}},
                )
                _flush_logs()
                exit_now(128 + received[-1])
                return

    watcher = threading.Thread(target=watch, name="signal-watch", daemon=True)
    watcher.start()
    previous = {sig: signal.signal(sig, handler) for sig in stop_signals()}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        closed.set()
        notice.set()
        watcher.join(timeout=1)
