"""CycleReport's JSON encoding: what a cycle run in a child process hands back to ``run``."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trackssl_agent.agent.cycle_report import CycleReport
from trackssl_agent.errors import ExitCode

counts = st.integers(min_value=0, max_value=10**9)
texts = st.none() | st.text(max_size=200)

reports = st.builds(
    CycleReport,
    domains=counts,
    skipped=counts,
    retrieved=counts,
    failed=st.dictionaries(st.text(min_size=1, max_size=20), counts, max_size=5),
    delivered=counts,
    queued=counts,
    rejected=counts,
    backlog=counts,
    elapsed_s=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    exit_code=st.sampled_from(list(ExitCode)),
    problem=texts,
    state_problem=texts,
    unsaved=counts,
)


@given(reports)
def test_json_round_trip_keeps_every_figure(report: CycleReport) -> None:
    """from_json(to_json(r)) equals r field for field, and so renders the same log line."""
    back = CycleReport.from_json(report.to_json())
    assert back == report
    assert back.log_line() == report.log_line()
    assert isinstance(back.exit_code, ExitCode)


def test_results_stay_out_of_the_json() -> None:
    """The per-target results are not encoded: they stay in the process that ran the cycle."""
    report = CycleReport(
        domains=1, skipped=0, retrieved=1, failed={}, delivered=1, queued=0, rejected=0,
        backlog=0, elapsed_s=0.5, exit_code=ExitCode.OK, results=(object(),),  # type: ignore[arg-type]
    )  # fmt: skip
    assert "results" not in json.loads(report.to_json())
    assert CycleReport.from_json(report.to_json()).results == ()


@given(reports, st.sampled_from(["domains", "queued", "exit_code", "failed", "problem"]))
def test_a_missing_or_wrong_field_is_a_value_error(report: CycleReport, key: str) -> None:
    """A field that is missing, or of the wrong type, is a ValueError, never a bad report."""
    data = json.loads(report.to_json())
    del data[key]
    with pytest.raises(ValueError, match="not a cycle report"):
        CycleReport.from_json(json.dumps(data))
    data[key] = [1] if key != "exit_code" else 99
    with pytest.raises(ValueError):
        CycleReport.from_json(json.dumps(data))


@pytest.mark.parametrize("text", ["", "[]", "null", '"x"', "{", '{"domains": -1}'])
def test_text_that_is_no_report_is_a_value_error(text: str) -> None:
    """Broken or foreign JSON (a child that died mid-write) is a ValueError."""
    with pytest.raises(ValueError):
        CycleReport.from_json(text)
