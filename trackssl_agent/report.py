"""The exit-code authority (SPEC section 2, Nagios style): every exit status of the process
is decided here, from facts the rest of the agent reports: probe results against the
expiry thresholds, a cycle's delivery facts, an error, a signal."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from trackssl_agent import certificates
from trackssl_agent.errors import AgentError, ExitCode
from trackssl_agent.results import ProbeResult

__all__ = [
    "ExitCode", "Thresholds", "cycle_exit_code", "doctor_exit_code", "error_exit_code",
    "probe_exit_code", "result_status", "signal_exit_code",
]  # fmt: skip


_SIGNAL_BASE = 128
"""Shell convention: a process ended by signal N exits 128 + N."""


@dataclass(frozen=True)
class Thresholds:
    """``--warn-days`` and ``--crit-days``; their defaults live in the settings table."""

    warn_days: int
    crit_days: int


def result_status(result: ProbeResult, thresholds: Thresholds, now: datetime) -> ExitCode:
    """CRITICAL when not probed, expired or within crit-days; WARNING within warn-days.

    A leaf whose expiry date cannot be parsed is a WARNING: it was retrieved, but nobody
    can say when it expires.
    """
    if not result.ok or not result.chain:
        return ExitCode.CRITICAL
    not_after = certificates.expiry(result.chain[0])
    if not_after is None:
        return ExitCode.WARNING
    left = (not_after - now).total_seconds()
    if left < thresholds.crit_days * 86400:
        return ExitCode.CRITICAL
    if left < thresholds.warn_days * 86400:
        return ExitCode.WARNING
    return ExitCode.OK


def probe_exit_code(
    results: Iterable[ProbeResult], thresholds: Thresholds, now: datetime
) -> ExitCode:
    """The worst status over all results (OK for none)."""
    return max((result_status(r, thresholds, now) for r in results), default=ExitCode.OK)


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
