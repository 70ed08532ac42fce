"""Property-based tests (issue 9, part 8) for certificate summaries and their text output:
any subject a server can put in its certificate is summarised without raising and shown
on the terminal without control characters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import der
from tests.certs import make_chain
from trackssl_agent.engine.certificates import summarize
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.render import output

# UTF8String, PrintableString, T61String, IA5String, UniversalString, BMPString, and noise.
_STRING_TAGS = st.sampled_from([0x0C, 0x13, 0x14, 0x16, 0x1C, 0x1E, 0x04, 0x30])
_VALUES = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\r\n", b"\x1b[2J", b"\xe2\x80\xae", b"\xc2\x9b31m", b"\xff\xfe", b"\x00"]),
)


@pytest.fixture(scope="module")
def leaf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real leaf certificate to edit."""
    return make_chain(Path(tmp_path_factory.mktemp("fuzz")), name="fuzz").ders[0]


def _with_subject(certificate: bytes, tag: int, value: bytes) -> bytes:
    def edit(fields: list[der.Item]) -> list[der.Item]:
        common_name = der.encode(0x06, bytes([0x55, 0x04, 0x03])) + der.encode(tag, value)
        fields[5] = (0x30, der.encode(0x31, der.encode(0x30, common_name)))
        return fields

    return der.edit_tbs(certificate, edit)


@settings(
    max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tag=_STRING_TAGS, value=_VALUES)
def test_any_subject_is_summarised_and_printed_safely(leaf: bytes, tag: int, value: bytes) -> None:
    """Whatever string type and bytes the subject holds, the summary does not raise, keeps
    the expiry unless the whole certificate is rejected (then says so), and the text output
    has no control characters: one printable line per field."""
    certificate = _with_subject(leaf, tag, value)
    summary = summarize(certificate)
    assert summary.not_after is not None or summary.warnings[0].startswith(
        "certificate structure could not be parsed"
    )
    result = ProbeResult(
        target=parse_target("127.0.0.1:443"), servername=None, address="127.0.0.1",
        probed_at=datetime.now(UTC), elapsed_ms=1.0, chain=(certificate,),
    )  # fmt: skip
    text = output.render_text(result, datetime.now(UTC))
    lines = text.splitlines()
    assert all(line.isprintable() for line in lines), lines
    assert len(lines) == 11 + (1 if output.warning_text(result, summary) else 0)


def test_undecodable_subject_nulls_only_the_subject(leaf: bytes) -> None:
    """Regression: a subject cryptography cannot decode (invalid UTF-8 in a UTF8String)
    made ``summarize`` raise, because the name was read outside the per-field guard."""
    summary = summarize(der.invalid_utf8_subject(leaf))
    assert summary.subject is None
    assert summary.issuer is not None
    assert any(w.startswith("certificate subject could not be parsed") for w in summary.warnings)
