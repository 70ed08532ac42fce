"""Certificate summaries: pure functions over DER, including certificates parsers reject."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import der, tls_servers
from tests.certs import Chain, make_chain
from trackssl_agent.engine.certificates import summarize, to_pem
from trackssl_agent.engine.probe import ProbeSettings, probe
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.render import output


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """A leaf with DNS and IP SANs under an intermediate."""
    return make_chain(tmp_path_factory.mktemp("c"), cn="dc1.corp.example", days=35)


def test_summary_fields(chain: Chain) -> None:
    """Subject, issuer, SANs, key, algorithm, dates and fingerprint come from the leaf."""
    summary = summarize(chain.ders[0])
    assert summary.subject == "CN=dc1.corp.example"
    assert summary.issuer == "CN=server Test Issuing CA"
    assert summary.sans == ("localhost", "127.0.0.1", "::1")
    assert summary.key == "RSA 2048"
    assert summary.signature_algorithm == "sha256WithRSAEncryption"
    assert summary.self_signed is False
    serial = chain.leaf.serial_number
    assert summary.serial == serial.to_bytes((serial.bit_length() + 7) // 8, "big").hex()
    assert len(summary.sha256) == 64
    assert summary.sha256 == summary.sha256.lower()
    assert summary.days_remaining(datetime.now(UTC)) in (34, 35)
    assert summary.warnings == ()


def test_days_remaining_negative_after_expiry(chain: Chain) -> None:
    """days_remaining counts down through zero into negatives."""
    summary = summarize(chain.ders[0])
    assert summary.not_after is not None
    assert summary.days_remaining(summary.not_after + timedelta(days=2, hours=1)) == -3


def test_negative_serial_is_reported_with_warning(chain: Chain) -> None:
    """A negative serial is shown as such and flagged, not rejected."""
    summary = summarize(der.negative_serial(chain.ders[0]))
    assert summary.serial == "-7b"
    assert any("serial" in w for w in summary.warnings)
    assert summary.subject == "CN=dc1.corp.example"


def test_duplicate_extensions_null_only_the_sans(chain: Chain) -> None:
    """Duplicate extensions make SANs unreadable; the other fields remain."""
    summary = summarize(der.duplicate_extensions(chain.ders[0]))
    assert summary.sans is None
    assert summary.not_after is not None
    assert any("subjectAltName" in w for w in summary.warnings)


def test_malformed_dates_and_garbage_never_raise(chain: Chain) -> None:
    """Unparseable certificates give null fields, a warning, and still a fingerprint."""
    for blob in (der.bad_not_after(chain.ders[0]), der.garbage()):
        summary = summarize(blob)
        assert summary.not_after is None
        assert summary.subject is None
        assert summary.warnings
        assert len(summary.sha256) == 64


def test_unparseable_leaf_is_still_retrieved_and_reported(tmp_path: Path, chain: Chain) -> None:
    """A server presenting a non-conforming certificate still yields its chain and JSON.

    OpenSSL itself refuses to serve duplicate extensions or bad dates, so the served
    certificate carries a negative serial; the unparseable cases are covered above.
    """
    broken = der.negative_serial(chain.ders[0])
    cert_file = tmp_path / "broken.crt"
    cert_file.write_text(to_pem(broken))
    served = Chain(cert_file, chain.key_file, chain.ca_file, (broken,), chain.leaf)
    context = tls_servers.server_context(served)
    with tls_servers.running(tls_servers.tls_server(context)) as server:
        result = probe(parse_target(server.endpoint), ProbeSettings(timeout=5))
    assert result.ok
    assert result.chain == (broken,)
    document = output.result_json(result, datetime.now(UTC))
    assert document["certificate"]["serial"] == "-7b"
    assert "serial number is not positive" in document["warning"]
