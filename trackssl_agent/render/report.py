"""The exit-code authority (SPEC section 2, Nagios style): every exit status of the process
is decided here, from facts the rest of the agent reports: the verdicts on probe results
(their status, SPEC section 4a), a cycle's delivery facts, an error, a signal."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from trackssl_agent.errors import AgentError, ExitCode

if TYPE_CHECKING:
    from trackssl_agent.verdict.judge import Verdict

__all__ = [
    "ExitCode", "cycle_exit_code", "doctor_exit_code", "error_exit_code", "probe_exit_code",
    "signal_exit_code", "status_exit_code",
]  # fmt: skip


_SIGNAL_BASE = 128
"""Shell convention: a process ended by signal N exits 128 + N."""


_STATUS_CODES = {"OK": ExitCode.OK, "WARNING": ExitCode.WARNING, "CRITICAL": ExitCode.CRITICAL}
"""A verdict's status (``verdict.judge.Status``, SPEC section 4a) as its exit code: keyed by the
word, so that this module, which ``run`` loads, never imports the judging modules."""


def status_exit_code(status: str) -> ExitCode:
    """The exit code of one status word: OK 0, WARNING 1, CRITICAL 2."""
    return _STATUS_CODES[str(status)]


def probe_exit_code(verdicts: Iterable[Verdict], *, interrupted: bool = False) -> ExitCode | int:
    """``probe`` and local mode: the worst status over all verdicts (OK for none); 130 when
    Ctrl-C cut the run short, whatever was found before."""
    if interrupted:
        return signal_exit_code(signal.SIGINT)
    return max((status_exit_code(v.status) for v in verdicts), default=ExitCode.OK)


def cycle_exit_code(*, auth_failed: bool, waits: bool) -> ExitCode:
    """A cycle's code: CRITICAL when the API refused the tokens; WARNING when a result is
    not delivered (queued, not stored, rejected) or the state dir lost durability."""
    if auth_failed:
        return ExitCode.CRITICAL
    return ExitCode.WARNING if waits else ExitCode.OK


def doctor_exit_code(*, failed: bool, unreadable: bool) -> ExitCode:
    """``doctor``'s code: USAGE when the configuration cannot be read at all, CRITICAL when
    a check failed; warnings alone leave it OK (they do not stop a cycle)."""
    if unreadable:
        return ExitCode.USAGE
    return ExitCode.CRITICAL if failed else ExitCode.OK


def error_exit_code(exc: BaseException) -> ExitCode:
    """The code an error ends the process with: the one its kind declares for the agent's
    own errors (``errors``); CRITICAL for anything else (a closed stdout, a bug)."""
    return exc.exit_code if isinstance(exc, AgentError) else ExitCode.CRITICAL


def signal_exit_code(signum: int) -> int:
    """The code of an immediate exit on signal ``signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return _SIGNAL_BASE + signum
