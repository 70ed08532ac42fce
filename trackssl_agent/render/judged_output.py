"""The output of ``probe`` and local mode, judged (SPEC section 4a): each format over the
results with their verdicts, and the text's pieces for streaming (a block per target, the
summary line last)."""

from __future__ import annotations

import json
from datetime import datetime

from trackssl_agent.render import output
from trackssl_agent.verdict.judge import Judged, Policy
from trackssl_agent.verdict.local_mode import Outcome


def text_block(judged: Judged, now: datetime, *, first: bool) -> str:
    """One target's text, with the blank line that separates it from the one before."""
    block = output.render_text(judged.result, now, judged.verdict)
    return block if first else "\n" + block


def summary_text(outcome: Outcome) -> str:
    """The summary line after the last target's text (a blank line before it)."""
    return ("\n" if outcome.judged else "") + outcome.tally().line() + "\n"


def render(outcome: Outcome, *, fmt: str, policy: Policy, now: datetime) -> str:
    """The whole output in ``fmt`` (text, json, openmetrics, nagios)."""
    judged = outcome.judged
    if fmt == "json":
        objects = [output.result_json(j.result, now, j.verdict) for j in judged]
        return json.dumps(objects, indent=2) + "\n"
    if fmt == "openmetrics":
        from trackssl_agent.render import openmetrics  # noqa: PLC0415 - only for this format

        return openmetrics.render([j.result for j in judged], [j.verdict for j in judged])
    if fmt == "nagios":
        from trackssl_agent.render import nagios  # noqa: PLC0415 - only for this format

        return nagios.render(judged, policy, outcome.tally())
    blocks = "".join(text_block(j, now, first=i == 0) for i, j in enumerate(judged))
    return blocks + summary_text(outcome)
