"""``doctor``: every check between "installed" and "a cycle works", in the order they
depend on each other, as one line each; rendered as text or JSON.

Order (issue 14): the configuration, the tokens, the API connection step by step,
authentication, the clock, the state dir, the engine, a sample of the targets. It contacts
nothing but the API (and the sampled targets with ``probe``), and every network step runs
under one absolute deadline, so it ends within 30 s even when the API hangs. The auth
token is never part of a line: each line also passes through ``log.redact``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trackssl_agent import log
from trackssl_agent.doctor.values import Check, Status
from trackssl_agent.engine.transport import Deadline
from trackssl_agent.errors import ExitCode
from trackssl_agent.render import report

__all__ = ["NETWORK_SECONDS", "Check", "Diagnosis", "Status", "diagnose", "render_json",
           "render_text"]  # fmt: skip

NETWORK_SECONDS = 25.0
"""Every network step together; with start-up and the local checks well under 30 s."""


_NAME_WIDTH = 13


@dataclass(frozen=True)
class Diagnosis:
    """Every check's line, and whether the configuration could be read at all."""

    checks: tuple[Check, ...]
    unreadable: bool = False

    @property
    def exit_code(self) -> ExitCode:
        """0 nothing failed, 2 a check failed, 3 the configuration cannot be read."""
        failed = any(check.status is Status.FAIL for check in self.checks)
        return report.doctor_exit_code(failed=failed, unreadable=self.unreadable)


def diagnose(
    *, config_path: Path | None, targets_sample: int = 5, send_probe: bool = False,
    seconds: float = NETWORK_SECONDS,
) -> Diagnosis:  # fmt: skip
    """Run every check, in order."""
    # The check modules import the API client, the probe and cryptography: only now.
    from trackssl_agent.doctor import api, local, probe  # noqa: PLC0415

    checks, cfg, unreadable = local.configuration(config_path)
    if cfg is None:
        return Diagnosis((*checks, probe.engine()), unreadable=unreadable)
    deadline = Deadline(seconds)
    checks += local.tokens(cfg)
    connection, answer = api.connection(cfg, deadline)
    checks += connection
    if answer is not None:
        auth, domains = api.authentication(cfg, deadline)
    else:
        auth = Check("auth", Status.FAIL, "not checked: the API is not reachable", "see above")
        domains = None
    checks += [auth, api.clock(answer)]
    checks += local.state_dir(cfg)
    checks.append(probe.engine())
    checks += probe.targets(
        cfg, domains, sample=targets_sample, send_probe=send_probe, deadline=deadline
    )
    return Diagnosis(tuple(checks))


def _clean(text: str) -> str:
    """One printable line with every registered secret masked."""
    return log.printable(log.redact(text))


def render_text(checks: Sequence[Check]) -> str:
    """One line per check: status, name, what was found, and the fix for a warn or FAIL;
    then a count."""
    # Target names can be long: past this width the detail simply starts later.
    width = min(max((len(check.check) for check in checks), default=0), _NAME_WIDTH)
    lines = []
    for check in checks:
        detail = _clean(check.detail)
        line = f"{check.status.value:<4}  {check.check:<{width}}  {detail}"
        if check.fix and check.status is not Status.OK:
            # A detail that ends a sentence ("...on this port?") takes the fix as the next.
            line += f"{' ' if detail.endswith(('?', '.', '!')) else '; '}fix: {_clean(check.fix)}"
        lines.append(line)
    counts = {status: sum(c.status is status for c in checks) for status in Status}
    lines.append(
        f"doctor: {counts[Status.OK]} ok, {counts[Status.WARN]} warn, {counts[Status.FAIL]} FAIL"
    )
    return "\n".join(lines)


def render_json(checks: Sequence[Check]) -> str:
    """The same as an array of ``{check, status, detail, fix}`` (fix null when none)."""
    rows = [
        {
            "check": check.check,
            "status": check.status.value,
            "detail": log.redact(check.detail),
            "fix": log.redact(check.fix) or None,
        }
        for check in checks
    ]
    # Then the document as written: an escaped form of a secret goes too, validly.
    return log.redact_json(json.dumps(rows, indent=2))
