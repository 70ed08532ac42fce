"""What one API cycle did, and its one rendering: the figures line that ``check-once``
prints and ``run`` logs (with the same words), and the same figures as JSON log fields;
and its JSON encoding, by which a cycle run in a child process hands it to ``run``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.errors import ExitCode
from trackssl_agent.log import LogLine


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did."""

    domains: int
    """Domains in the list (after skipping bad entries)."""
    skipped: int
    """Bad entries of the domain list."""
    retrieved: int
    """Targets whose chain was retrieved."""
    failed: Mapping[str, int]
    """Targets not probed, by error kind."""
    delivered: int
    """Results the API accepted, earlier cycles' included."""
    queued: int
    """Results left in the outbox for the next cycle."""
    rejected: int
    """Results the API refused for good (dropped)."""
    backlog: int
    """Results from earlier cycles found in the outbox at the start."""
    elapsed_s: float
    exit_code: ExitCode
    problem: str | None = None
    """Why delivery stopped early (API down, auth rejected), if it did."""
    state_problem: str | None = None
    """Why results were not stored in the state dir this cycle (said once in the log)."""
    unsaved: int = 0
    """Results neither delivered nor stored (the state dir failed): probed again next cycle."""
    results: tuple[ProbeResult, ...] = field(default=(), repr=False)
    """The results in domain-list order, when asked to keep them."""

    def figures(self, *, elapsed: bool = True) -> str:
        """``domains 2, retrieved 1, failed 1 (refused 1), delivered 2, queued 0, ...``:
        the counts people read, zero counts of rare events left out."""
        failed = sum(self.failed.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.failed.items()))
        parts = [
            f"domains {self.domains}",
            f"retrieved {self.retrieved}",
            f"failed {failed}" + (f" ({kinds})" if kinds else ""),
            f"delivered {self.delivered}",
            f"queued {self.queued}",
        ]
        if self.unsaved:
            parts.append(f"not stored {self.unsaved}")
        if self.rejected:
            parts.append(f"rejected {self.rejected}")
        if self.skipped:
            parts.append(f"skipped entries {self.skipped}")
        if elapsed:
            parts.append(f"elapsed {self.elapsed_s:.1f} s")
        return ", ".join(parts)

    def log_line(self) -> LogLine:
        """``run``'s line for this cycle (its duration is said by the loop) and its JSON
        fields, the figures kept as numbers."""
        text = self.figures(elapsed=False)
        if self.problem:
            text += f" (delivery stopped: {self.problem})"
        return LogLine(
            text,
            {
                "domains": self.domains,
                "retrieved": self.retrieved,
                "failed": sum(self.failed.values()),
                "failed_by_kind": dict(self.failed),
                "delivered": self.delivered,
                "queued": self.queued,
                "rejected": self.rejected,
                "skipped": self.skipped,
                "problem": self.problem,
                "unsaved": self.unsaved,
                "state_problem": self.state_problem,
            },
        )

    def to_json(self) -> str:
        """This report as one JSON object, without ``results`` (which stay where the cycle
        ran); ``from_json`` reads it back."""
        return json.dumps(
            {
                "domains": self.domains,
                "skipped": self.skipped,
                "retrieved": self.retrieved,
                "failed": dict(self.failed),
                "delivered": self.delivered,
                "queued": self.queued,
                "rejected": self.rejected,
                "backlog": self.backlog,
                "elapsed_s": self.elapsed_s,
                "exit_code": int(self.exit_code),
                "problem": self.problem,
                "state_problem": self.state_problem,
                "unsaved": self.unsaved,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> CycleReport:
        """The report ``to_json`` wrote; ValueError for anything else."""
        try:
            data = json.loads(text)
            return cls(
                domains=_count(data["domains"]),
                skipped=_count(data["skipped"]),
                retrieved=_count(data["retrieved"]),
                failed={str(k): _count(v) for k, v in dict(data["failed"]).items()},
                delivered=_count(data["delivered"]),
                queued=_count(data["queued"]),
                rejected=_count(data["rejected"]),
                backlog=_count(data["backlog"]),
                elapsed_s=float(data["elapsed_s"]),
                exit_code=ExitCode(data["exit_code"]),
                problem=_text(data["problem"]),
                state_problem=_text(data["state_problem"]),
                unsaved=_count(data["unsaved"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a cycle report: {type(exc).__name__}: {exc}") from exc


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"not text: {value!r}")
    return value
