"""``--format nagios`` (SPEC section 4a): a Nagios/Icinga plugin's output. The first line is
``TRACKSSL STATUS - TEXT | PERFDATA``; then one line per target that is not OK.

The status and the exit code agree (both are the worst verdict). Text from outside (a
certificate's names in a message) is made printable, and a ``|`` in it becomes ``/``: Nagios
reads everything after the first ``|`` as performance data.
"""

from __future__ import annotations

from collections.abc import Sequence

from trackssl_agent.log import printable
from trackssl_agent.verdict.judge import Judged, Policy, Status, Tally

_RANK = {Status.OK: 0, Status.WARNING: 1, Status.CRITICAL: 2}


def _clean(text: str) -> str:
    return printable(text).replace("|", "/")


def _worst(judged: Sequence[Judged]) -> Status:
    return max((j.verdict.status for j in judged), key=_RANK.__getitem__, default=Status.OK)


def perfdata(judged: Sequence[Judged], policy: Policy, tally: Tally) -> str:
    """``days=MIN;WARN;CRIT ok=A warning=B critical=C``: MIN the fewest days left of any
    leaf (``U``, Nagios's unknown, when no leaf was retrieved)."""
    days = [j.verdict.days_left for j in judged if j.verdict.days_left is not None]
    fewest = str(min(days)) if days else "U"
    counts = " ".join(f"{s.value.lower()}={tally.statuses[s]}" for s in Status)
    return f"days={fewest};{policy.warn_days};{policy.crit_days} {counts}"


def status_text(judged: Sequence[Judged], tally: Tally) -> str:
    """The worst target and why, or for all OK the count and the fewest days left."""
    worst = _worst(judged)
    if not judged:
        text = "no target probed"
    elif worst is Status.OK:
        soonest = min(
            (j for j in judged if j.verdict.days_left is not None),
            key=lambda j: j.verdict.days_left or 0,
            default=None,
        )
        text = f"{len(judged)} target{'' if len(judged) == 1 else 's'} OK"
        if soonest is not None:
            text += f", fewest days left {soonest.verdict.days_left} ({soonest.result.target.text})"
    else:
        first = next(j for j in judged if j.verdict.status is worst)
        others = tally.statuses[worst] - 1
        text = f"{first.result.target.text}: {first.verdict.why}"
        if others:
            text += f" (and {others} more {worst.value})"
    if tally.not_probed:
        text += f"; {tally.not_probed} not probed (interrupted)"
    return _clean(text)


def render(judged: Sequence[Judged], policy: Policy, tally: Tally) -> str:
    """The plugin output for ``judged`` (in input order)."""
    worst = _worst(judged)
    lines = [
        f"TRACKSSL {worst.value} - {status_text(judged, tally)} | {perfdata(judged, policy, tally)}"
    ]
    lines += [
        _clean(f"{j.result.target.text}  {j.verdict.status.value}  {j.verdict.why}")
        for j in judged
        if j.verdict.status is not Status.OK
    ]
    return "\n".join(lines) + "\n"
