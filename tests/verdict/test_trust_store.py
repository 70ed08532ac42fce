"""The trust anchors: where the OS store is read on each platform, a frozen build's own
bundle never counting, the store read once and only when needed, and one note when none
can be read. Also RFC 6125 name matching, compared with ``cryptography``'s verifier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    PolicyBuilder,
    Store,
    VerificationError,
)

from tests import tls_servers
from tests.certs import PrivateKey, der, make_cert, make_chain, new_key, pem
from tests.cli_helpers import run_cli
from tests.der import invalid_utf8_subject
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.verdict import chain_check, trust_store
from trackssl_agent.verdict.judge import Judge, Policy
from trackssl_agent.verdict.trust_store import LazyAnchors


def _roots(directory: Path, *names: str) -> list[x509.Certificate]:
    return [make_chain(directory, name=name).leaf for name in names]


def test_ssl_cert_file_and_dir_are_the_store(tmp_path: Path) -> None:
    """SSL_CERT_FILE and SSL_CERT_DIR, when set, are what is read, on every platform."""
    key = new_key()
    first, second = (make_cert(cn=f"Root {n}", key=key, ca=True) for n in (1, 2))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pem(first) + b"junk between\n" + pem(first))
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "a1b2c3d4.0").write_bytes(pem(second))
    for platform in ("linux", "win32", "darwin"):
        certs, sources = trust_store.os_store(
            environ={"SSL_CERT_FILE": str(bundle), "SSL_CERT_DIR": str(folder)}, platform=platform
        )
        assert [c.subject.rfc4514_string() for c in certs] == [
            "CN=Root 1",
            "CN=Root 1",
            "CN=Root 2",
        ]
        assert sources == [str(bundle), str(folder)]


def test_a_frozen_builds_own_bundle_never_counts(tmp_path: Path) -> None:
    """A CA file inside the frozen build's folder (certifi travels with requests) is skipped:
    the host's store is read instead."""
    bundled = tmp_path / "_MEI123" / "certifi"
    bundled.mkdir(parents=True)
    (bundled / "cacert.pem").write_bytes(pem(make_cert(cn="Bundled", key=new_key(), ca=True)))
    _certs, sources = trust_store.os_store(
        environ={"SSL_CERT_FILE": str(bundled / "cacert.pem")},
        platform="linux",
        bundle=str(tmp_path / "_MEI123"),
    )
    assert str(bundled / "cacert.pem") not in sources


def test_windows_root_entries_that_anchor_servers() -> None:
    """Windows ROOT entries count when trusted for everything or for server authentication."""
    entries: list[tuple[bytes, str, set[str] | bool]] = [
        (b"all", "x509_asn", True),
        (b"server", "x509_asn", {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}),
        (b"mail-only", "x509_asn", {"1.3.6.1.5.5.7.3.4"}),
        (b"crl", "pkcs_7_asn", True),
    ]
    assert trust_store.windows_entries(entries) == [b"all", b"server"]


def test_macos_reads_the_system_keychains_through_security(tmp_path: Path) -> None:
    """On macOS the roots come from ``security find-certificate -a -p`` of the system roots
    and the System keychain (the tool is replaced here: this machine is not a Mac)."""
    root = make_cert(cn="Keychain Root", key=new_key(), ca=True)
    asked: list[list[str]] = []

    def security(command: list[str]) -> bytes | None:
        asked.append(command)
        return pem(root) if command[-1].startswith("/System/") else None

    certs, sources = trust_store.os_store(environ={}, platform="darwin", run=security)
    assert [c.subject.rfc4514_string() for c in certs] == ["CN=Keychain Root"]
    assert sources == [trust_store.MACOS_KEYCHAINS[0]]
    assert [c[:4] for c in asked] == [["/usr/bin/security", "find-certificate", "-a", "-p"]] * 2


def _result(chain: tuple[bytes, ...]) -> ProbeResult:
    return ProbeResult(
        target=parse_target("127.0.0.1:443", starttls="auto"), servername=None,
        address="127.0.0.1", probed_at=datetime.now(UTC), elapsed_ms=1.0, chain=chain,
    )  # fmt: skip


def test_the_store_is_read_once_and_only_when_needed(tmp_path: Path) -> None:
    """The OS store is read on the first chain to judge, once for all; never when every
    target failed."""
    reads: list[int] = []

    def read() -> tuple[list[x509.Certificate], list[str]]:
        reads.append(1)
        return [], []

    judge = Judge(Policy(30, 7), LazyAnchors(read_os_store=read))
    judge(ProbeResult(target=_result(()).target, servername=None, address=None,
                      probed_at=datetime.now(UTC), elapsed_ms=1.0))  # fmt: skip
    assert reads == []
    chain = make_chain(tmp_path, name="lazy")
    for _ in range(3):
        judge(_result(chain.ders))
    assert reads == [1]
    assert judge.store_note() is not None


def test_no_store_is_said_once_as_a_note(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When no OS store can be read, one note says so on stderr, however many targets; the
    targets are untrusted notes, not failures."""
    chain = make_chain(tmp_path, name="nostore")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with tls_servers.running(tls_servers.tls_server(tls_servers.server_context(chain))) as server:
        code, _out, err = run_cli(["probe", server.endpoint, server.endpoint], capsys)
    assert code == 0
    assert err.count("no OS trust store could be read") == 1


# Reference names against a SAN, and whether they match: RFC 6125 as the verifier applies it.
NAME_CASES = [
    ("*.a.test", "x.a.test"), ("*.a.test", "a.test"), ("*.a.test", "y.x.a.test"),
    ("*.a.test", "X.A.TEST"), ("f*.a.test", "fx.a.test"), ("*", "x"), ("*.test", "x.test"),
    ("x.a.test", "x.a.test"), ("X.A.Test", "x.a.test"), ("x.a.test.", "x.a.test"),
    ("x.*.test", "x.a.test"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("::1", "0:0::1"),
    ("10.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"),
]  # fmt: skip


@pytest.mark.parametrize(("san", "reference"), NAME_CASES)
def test_name_matching_agrees_with_cryptography(san: str, reference: str) -> None:
    """Where the certificate has SANs, the name rule is cryptography's: the verifier checks
    the name before anything else, so its refusal for the name says the name does not match."""
    key = new_key()
    leaf = make_cert(cn="leaf", key=key, sans=(san,))
    ours = chain_check.name_problem(leaf, reference) is None
    try:
        import ipaddress  # noqa: PLC0415 - only here

        subject: DNSName | IPAddress = IPAddress(ipaddress.ip_address(reference))
    except ValueError:
        subject = DNSName(reference.lower())
    verifier = (
        PolicyBuilder().store(Store([leaf])).time(datetime.now(UTC)).build_server_verifier(subject)
    )
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        theirs = "no matching subjectAltName" not in str(exc)
    else:
        theirs = True
    assert ours == theirs


def test_common_name_only_without_sans() -> None:
    """The CN counts only when the certificate has no DNS or IP SAN."""
    key = new_key()
    bare = make_cert(cn="legacy.test", key=key)
    with_sans = make_cert(cn="legacy.test", key=key, sans=("other.test",))
    assert chain_check.name_problem(bare, "legacy.test") is None
    assert chain_check.name_problem(bare, "Legacy.Test") is None
    assert chain_check.name_problem(with_sans, "legacy.test") is not None


def test_an_anchor_may_be_the_leaf_itself(tmp_path: Path) -> None:
    """A self-signed certificate given as an anchor (pinned with --ca-file) is trusted."""
    key = new_key()
    leaf = make_cert(cn="127.0.0.1", key=key, sans=("127.0.0.1",))
    judge = Judge(Policy(30, 7), LazyAnchors([leaf], read_os_store=lambda: ([], [])))
    verdict = judge(_result((der(leaf),)))
    assert verdict.chain_verified
    assert verdict.problems == ()


def test_odd_certificates_are_judged_without_a_crash(tmp_path: Path) -> None:
    """Bytes that are no certificate, and a leaf whose subject is invalid UTF-8 (its issuer's
    signature broken with it), get a verdict: never an exception, the expiry kept when it
    can be read."""
    chain = make_chain(tmp_path, name="odd")
    undecodable = invalid_utf8_subject(chain.ders[0])
    judge = Judge(Policy(30, 7), LazyAnchors(read_os_store=lambda: ([], [])))
    garbage = judge(_result((b"\x30\x03\x02\x01\x00", chain.ders[1])))
    odd = judge(_result((undecodable, chain.ders[1])))
    assert garbage.status.value == "WARNING"
    assert [p.kind.value for p in garbage.problems] == ["expires_soon", "untrusted"]
    assert odd.status.value == "OK"
    assert "untrusted" in {p.kind.value for p in odd.problems}
    assert odd.days_left is not None


SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def _purpose_chain(
    inter_eku: list[x509.ObjectIdentifier] | None, leaf_eku: list[x509.ObjectIdentifier]
) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """Root, intermediate and leaf with the extendedKeyUsage given (None: none)."""
    now = datetime.now(UTC)

    def build(cn: str, key: PrivateKey, issuer: str, signer: PrivateKey, *, ca: bool,
              eku: list[x509.ObjectIdentifier] | None) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        return builder.sign(signer, hashes.SHA256())

    root_key, inter_key, leaf_key = new_key("ec"), new_key("ec"), new_key("ec")
    root = build("Purpose Root", root_key, "Purpose Root", root_key, ca=True, eku=None)
    inter = build("Purpose CA", inter_key, "Purpose Root", root_key, ca=True, eku=inter_eku)
    leaf = build("leaf", leaf_key, "Purpose CA", inter_key, ca=False, eku=leaf_eku)
    return root, inter, leaf


@pytest.mark.parametrize(
    ("inter_eku", "leaf_eku", "verified"),
    [
        (None, [SERVER], True),
        ([SERVER], [SERVER], True),  # most public intermediates restrict themselves so
        ([SERVER, CLIENT], [SERVER, CLIENT], True),
        ([CLIENT], [SERVER], False),
        (None, [CLIENT], False),
    ],
)
def test_the_path_is_judged_for_a_tls_server(
    inter_eku: list[x509.ObjectIdentifier] | None,
    leaf_eku: list[x509.ObjectIdentifier],
    verified: bool,
) -> None:
    """extendedKeyUsage is checked for server authentication, in the CAs as in the leaf
    (the path is built by cryptography's client verifier, whose own purpose is the client's)."""
    root, inter, leaf = _purpose_chain(inter_eku, leaf_eku)
    context = chain_check.TrustContext(trust_store.Anchors((root,), ()))
    trust = chain_check.check_trust(leaf, [inter], context, datetime.now(UTC))
    assert trust.verified is verified
    if not verified:
        assert trust.why is not None
        assert trust.why.endswith("extendedKeyUsage does not allow TLS server authentication")
