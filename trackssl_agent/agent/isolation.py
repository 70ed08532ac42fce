"""``run``'s cycles in a child process on Linux: all the memory a cycle touches goes back to
the system when the child exits, so the long-lived agent stays at its start-up size.

Measured on Linux: after a 10,000-target cycle in-process, ``run`` sat at 36-38 MiB instead
of 27 MiB, because a few long-lived objects pin half-empty pymalloc arenas that no
``malloc_trim`` can return. A child forked per cycle leaves nothing behind.

Only on Linux: macOS forbids a fork after its Security framework is loaded, Windows has no
fork. Elsewhere the cycle runs in this process, as before.

The child starts from a copy of the agent: the state-dir lock is the agent's open file
description (the child never unlocks it), the log handlers write to the same file. It
handles the stop signals itself (a fresh ``stopping_on_signals``; the agent's watcher thread
does not exist there), hands its CycleReport back as JSON on a pipe and always leaves by
``os._exit``: nothing of the agent's stack (its ``finally`` blocks) ever runs in it.

Whatever the child does (stopped by SIGSTOP, deadlocked, stuck in a system call), the agent
stays in charge. After a stop request the child gets ``--timeout`` plus ``STOP_GRACE``
seconds to end its probes and report; then it is killed (SIGKILL) and reaped, so ``run``
exits within ``--timeout`` plus a few seconds. While it runs, the child bumps a counter in
memory shared with the agent at every step of progress (``liveness``); a child whose
counter stands still for ``stall_limit`` seconds is killed as hung and the cycle logged as
failed, and the next cycle starts on schedule. Nothing is lost by a kill: a result enters
the outbox before its post is attempted, and the next cycle re-sends what is there.
"""

from __future__ import annotations

import contextlib
import gc
import json
import mmap
import os
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import NoReturn

from trackssl_agent import log
from trackssl_agent.agent import liveness
from trackssl_agent.agent.cycle_report import CycleReport
from trackssl_agent.agent.memory import release_memory
from trackssl_agent.agent.signals import stop_signals, stopping_on_signals
from trackssl_agent.errors import ApiError
from trackssl_agent.state.cycle_state import StateDir

logger = log.get_logger(__name__)

ISOLATED = sys.platform == "linux"
"""Whether ``run`` performs each cycle in a child process on this platform."""
POLL = 0.1
"""Seconds between the agent's looks at its stop event while a child runs: a stop signal
only the agent got reaches the child this soon, well within ``signals.SECOND_AFTER``."""
REAP_WAIT = 2.0
"""Longest wait for a killed child to be reaped."""
STOP_GRACE = 3.0
"""Seconds beyond ``--timeout`` a child gets to stop after a stop request: its probes end by
their deadline, then it stores what is left and reports; past that it is killed."""
STALL_BASE = 300.0
"""With twice ``--timeout``, how long a child may show no progress before it is killed as
hung (``stall_limit``). The longest quiet stretch a healthy cycle has is one API call with
all its retries (at most 110 s, ``ApiSettings.budget``) after a pause the API asked for with
``Retry-After`` (at most 120 s), or one probe (``--timeout``): 5 minutes stays clear of both."""
_NO_REPORT = 70  # the child's exit status when it could not even write its report
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

Work = Callable[[threading.Event], CycleReport]
"""One cycle, given the stop event of the process it runs in."""


class CycleProcessError(RuntimeError):
    """A cycle run in a child process failed, or the child ended without a report."""


def stall_limit(timeout: float) -> float:
    """Seconds without progress after which a cycle's child is killed as hung."""
    return STALL_BASE + 2 * timeout


class _Beats:
    """A counter in memory shared with the child (an anonymous shared mapping survives the
    fork): the child bumps it, the agent watches it move. Threads of the child may race on
    it; a lost increment still changes the value, which is all the agent looks at."""

    def __init__(self) -> None:
        self.memory = mmap.mmap(-1, 8)

    def bump(self) -> None:
        """In the child: one more step of progress."""
        value = int.from_bytes(self.memory[:8], "little")
        self.memory[:8] = ((value + 1) % (1 << 64)).to_bytes(8, "little")

    def count(self) -> int:
        """In the agent: the counter now."""
        return int.from_bytes(self.memory[:8], "little")

    def close(self) -> None:
        """Unmap it (the agent, once the child is gone)."""
        self.memory.close()


class CycleProcess:
    """Runs each cycle of ``run``: in a child process when ``isolated``, else in this one."""

    def __init__(
        self,
        *,
        stop: threading.Event,
        state: StateDir | None,
        isolated: bool = ISOLATED,
        timeout: float = 10.0,
        stall: float | None = None,
    ) -> None:
        self.stop = stop
        self.state = state
        self.isolated = isolated
        self.grace = timeout + STOP_GRACE
        """Seconds a child gets to stop after a stop request before it is killed."""
        self.stall = stall if stall is not None else stall_limit(timeout)
        """Seconds a child may show no progress before it is killed as hung."""
        self.child: int | None = None
        """The pid of the child running a cycle now."""
        self.last_pid = os.getpid()
        """The pid the last cycle ran in (``cycle_pid`` in its log line)."""
        self._unreaped: list[int] = []
        """Killed children not reaped yet (stuck in the kernel): tried again each cycle."""

    def run(self, work: Work) -> CycleReport:
        """One cycle; ApiError when the domain list could not be fetched (as in-process),
        CycleProcessError for anything else that went wrong in or with the child."""
        if not self.isolated:
            self.last_pid = os.getpid()
            return work(self.stop)
        self._unreaped = [pid for pid in self._unreaped if not _reaped_now(pid)]
        beats = _Beats()
        reader, writer = os.pipe()
        # Until the child has its own handlers, a stop signal it got would be written to
        # the agent's wakeup socket and taken for the agent's: hold the signals back.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals())
        agent = os.getpid()
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork with threads: the only other thread here is
                # the signal watcher, and logging re-creates its locks in the child.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            os.close(reader)
            os.close(writer)
            beats.close()
            raise CycleProcessError(f"cannot start the cycle's process: {exc}") from exc
        if pid == 0:  # pragma: no cover - the child; its coverage is not collected
            try:
                os.close(reader)
                liveness.arm(beats.bump)
                _child(work, writer, held, parent=agent, state=self.state)
            finally:
                os._exit(_NO_REPORT)
        self.child = self.last_pid = pid
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(writer)
        try:
            data, killed = self._read(reader, pid, beats)
            status = _reap(pid, within=REAP_WAIT if killed else None)
            if killed and status is None:
                self._unreaped.append(pid)
        finally:
            self.child = None
            os.close(reader)
            beats.close()
            # The child may have rotated the log file; what the agent freed is returned.
            log.reopen_log_files()
            gc.collect()
            release_memory()
        if killed:
            raise CycleProcessError(
                f"the cycle's process (pid {pid}) {killed}: killed it; the results it had "
                "stored stay in the outbox and are posted first next cycle"
            )
        return self._outcome(data, status, pid)

    def _read(self, reader: int, pid: int, beats: _Beats) -> tuple[bytes, str | None]:
        """The child's report, read until it exits; the agent's stop passed on once.

        The child is killed (SIGKILL) when it outlives its grace after a stop request or
        shows no progress for ``stall`` seconds; then the second value says why."""
        chunks: list[bytes] = []
        stop_at: float | None = None
        seen, quiet_since = beats.count(), time.monotonic()
        while True:
            now = time.monotonic()
            if self.stop.is_set() and stop_at is None:
                # A stop signal only the agent got (``kill PID``): the child stops cleanly
                # too. Sent to the group, the child got its own and this copy counts as
                # the same request there.
                stop_at = now
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if (count := beats.count()) != seen:
                seen, quiet_since = count, now
            why = None
            if stop_at is not None and now - stop_at >= self.grace:
                why = f"had not stopped {self.grace:g}s after the stop request"
            elif now - quiet_since >= self.stall:
                why = f"showed no progress for {self.stall:g}s (stopped or hung)"
            if why is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return b"".join(chunks), why
            ready, _, _ = select.select([reader], [], [], POLL)
            if ready:
                chunk = os.read(reader, 1 << 16)
                if not chunk:  # the child exited: its copy of the pipe is closed
                    return b"".join(chunks), None
                chunks.append(chunk)

    def _outcome(self, data: bytes, status: int | None, pid: int) -> CycleReport:
        try:
            envelope = json.loads(data) if data else None
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            raise CycleProcessError(
                f"the cycle's process (pid {pid}) {_ended(status)} before it reported; the "
                "results it had stored stay in the outbox and are posted first next cycle"
            )
        if self.state is not None and envelope.get("notice_pending") is False:
            self.state.notice_said()
        if "outage" in envelope:
            raise ApiError(str(envelope["outage"]))
        if "failed" in envelope:
            raise CycleProcessError(str(envelope["failed"]))
        try:
            return CycleReport.from_json(str(envelope.get("report")))
        except ValueError as exc:
            raise CycleProcessError(f"the cycle's process (pid {pid}): {exc}") from exc

    def describe(self, report: CycleReport) -> log.LogLine:
        """``run``'s line for a cycle: the report's, plus the pid the cycle ran in."""
        line = report.log_line()
        return log.LogLine(line.text, {**line.fields, "cycle_pid": self.last_pid})

    def exit_now(self, code: int) -> NoReturn:
        """``run``'s immediate exit: the running child is killed first, never orphaned."""
        pid = self.child
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid, within=REAP_WAIT)
        log.flush_logs()
        os._exit(code)


def _reap(pid: int, *, within: float | None = None) -> int | None:
    """The child's wait status; None when another thread reaped it or ``within`` passed."""
    end = None if within is None else time.monotonic() + within
    while True:
        try:
            done, status = os.waitpid(pid, 0 if end is None else os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if end is not None and time.monotonic() >= end:
            return None
        time.sleep(0.01)


def _reaped_now(pid: int) -> bool:
    """Reap ``pid`` if it has ended; whether it is gone (reaped now or before)."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return bool(done)


def _ended(status: int | None) -> str:
    if status is None:
        return "ended"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def _child(  # pragma: no cover - runs in the child
    work: Work, writer: int, held: Iterable[int], *, parent: int, state: StateDir | None
) -> NoReturn:
    """The child's whole life: one cycle, its report on ``writer``, ``os._exit``."""
    _die_with(parent)
    # The inherited wakeup fd is the agent's watcher socket: never write to it from here.
    signal.set_wakeup_fd(-1)
    stop = threading.Event()
    # A Ctrl-C reaches the agent too, which says what it means: said here, it would be
    # said twice.
    with stopping_on_signals(stop, announce=False):
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        envelope = _perform(work, stop)
    envelope["notice_pending"] = state.notice_pending if state is not None else False
    data = json.dumps(envelope).encode()
    while data:
        data = data[os.write(writer, data) :]
    log.flush_logs()
    os._exit(0)


def _perform(work: Work, stop: threading.Event) -> dict[str, object]:  # pragma: no cover
    try:
        report = work(stop)
    except ApiError as exc:
        return {"outage": str(exc)}
    except BaseException as exc:  # whatever it is, the agent must hear of it
        logger.debug("the cycle's traceback", exc_info=True)
        return {"failed": f"{type(exc).__name__}: {exc}"}
    return {"report": report.to_json()}


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the child
    """Have the kernel kill this child when the agent dies: an orphan would hold the
    state-dir lock (its copy of the lock's file description) past the agent's death."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes  # noqa: PLC0415 - only in the child, only on Linux

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent:  # the agent died before the prctl took effect
        os._exit(_NO_REPORT)
