"""Property-based tests (issue 9, part 8) for the domain list: any JSON-ish document and
any bytes decode to domains or one ResponseError, quickly, with printable warnings."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trackssl_agent.cloud import schema
from trackssl_agent.cloud.api import ResponseError

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LINEAR_S = 5.0
"""Each example's bound: no decode is quadratic or worse (those run for minutes on these
inputs); generous for a loaded 2-core runner, where they take milliseconds."""

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=40), st.sampled_from(["443", "65536", "0", "²", " 25 ", "smtp", "::1"]),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"domain_id": json_values, "hostname": json_values, "port": json_values},
        optional={"protocol": json_values},
    ),
    st.fixed_dictionaries(
        {
            "domain_id": st.integers(min_value=-5, max_value=2**64),
            "hostname": st.sampled_from(
                ["a.example", "127.0.0.1", "::1", "bad host", "é.example", ""]
            ),
            "port": st.one_of(st.integers(-1, 70000), st.text(max_size=6)),
        },
        optional={"protocol": st.sampled_from(["smtp", "none", "gopher", "", "LDAP"])},
    ),
)
documents = st.one_of(json_values, st.fixed_dictionaries({"data": st.lists(entries, max_size=20)}))


def check(domains: list[schema.Domain], skipped: schema.Skipped) -> None:
    """What every successful decode promises."""
    ids = [d.domain_id for d in domains]
    assert len(ids) == len(set(ids))
    for domain in domains:
        assert 0 <= domain.domain_id < 2**63
        assert 1 <= int(domain.port) <= 65535
        assert domain.target.port == int(domain.port)
    lines = skipped.lines()
    assert len(lines) <= schema.SHOWN_SKIPPED + 1
    for line in lines:
        assert line.isprintable()
        assert len(line) < 500


@BOUNDED
@given(document=documents)
def test_any_document_decodes_or_is_one_response_error(document: Any) -> None:
    """Any JSON document is a domain list (with summarised skips) or one ResponseError."""
    started = time.monotonic()
    body = json.dumps(document).encode()
    try:
        domains, skipped = schema.decode_domains(body)
    except ResponseError as exc:
        assert str(exc).isprintable()
    else:
        check(domains, skipped)
    assert time.monotonic() - started < LINEAR_S


@BOUNDED
@given(body=st.binary(max_size=300))
@example(body=b"[" * 100_000)
@example(body=b'{"data": [' + b"1" * 5000 + b"]}")
@example(body=b"\xef\xbb\xbf{}")
def test_any_bytes_decode_or_are_one_response_error(body: bytes) -> None:
    """Arbitrary bytes (nesting, huge numbers, bad encodings) never escape as another error."""
    started = time.monotonic()
    try:
        domains, skipped = schema.decode_domains(body)
    except ResponseError as exc:
        assert str(exc).isprintable()
    else:
        check(domains, skipped)
    assert time.monotonic() - started < LINEAR_S


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (
            {"domain_id": 10**30, "hostname": "a.example", "port": 443},
            "bad domain_id a huge number",
        ),
        ({"domain_id": "1" * 30, "hostname": "a.example", "port": 443}, "bad domain_id"),
        ({"domain_id": 1, "hostname": "a.example", "port": "²"}, "bad port '²'"),
        ({"domain_id": 1, "hostname": "a.example", "port": "9" * 5000}, "bad port '9999"),
        ({"domain_id": 1, "hostname": [[[[]]]], "port": 443}, "bad hostname a list"),
        ({"domain_id": -1, "hostname": "a.example", "port": 443}, "bad domain_id -1"),
        ({"domain_id": 1, "hostname": "x" * 1000, "port": 443}, "bad hostname 'xxx"),
    ],
)
def test_out_of_range_entries_are_skipped_briefly(entry: dict[str, Any], reason: str) -> None:
    """Entries in the fuzzed space that were accepted or quoted at length before: each is
    skipped with a short reason."""
    domains, skipped = schema.parse_domains({"data": [entry]})
    assert domains == []
    assert skipped.count == 1
    assert reason in skipped.lines()[0]
    assert len(skipped.lines()[0]) < 200
