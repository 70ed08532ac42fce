"""Expiry thresholds and exit codes over a batch of results (SPEC section 2, Nagios style)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from trackssl_agent import certificates
from trackssl_agent.results import ProbeResult


class ExitCode(IntEnum):
    """The process exit codes, the same for every command."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    USAGE = 3


@dataclass(frozen=True)
class Thresholds:
    """``--warn-days`` and ``--crit-days``."""

    warn_days: int = 30
    crit_days: int = 7


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
