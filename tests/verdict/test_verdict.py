"""The verdict of ``probe`` (SPEC section 4a) against real loopback TLS servers presenting
certificates generated here: status, problems and exit code, with and without ``--verify``.

The OS trust store is made deterministic: ``SSL_CERT_FILE`` points at a bundle of the roots
this module trusts (``SSL_CERT_DIR`` unset), exactly as a user would point it elsewhere.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import run_cli
from tests.listeners import closed_port
from tests.verdict_servers import NOW, World


def judged(
    capsys: pytest.CaptureFixture[str], world: World, name: str, *args: str
) -> tuple[int, dict[str, Any]]:
    """``probe --json`` of the server presenting chain ``name``: exit code and the object."""
    code, out, _err = run_cli(["probe", "--json", f"127.0.0.1:{world.ports[name]}", *args], capsys)
    (document,) = json.loads(out)
    return code, document


def kinds(document: dict[str, Any]) -> list[tuple[str, str]]:
    """``(kind, severity)`` of each problem, in the order given."""
    return [(p["kind"], p["severity"]) for p in document["problems"]]


def message(document: dict[str, Any], kind: str) -> str:
    """The message of the problem of ``kind``."""
    return str(next(p["message"] for p in document["problems"] if p["kind"] == kind))


# Each case: chain, extra args, status, problems (kind, severity) and exit code, without and
# with --verify (where --verify changes nothing, the same values).
CASES: list[tuple[str, tuple[str, ...], str, list[tuple[str, str]], int, str, int]] = [
    ("good", (), "OK", [], 0, "OK", 0),
    ("expired", (), "CRITICAL", [("expired", "critical")], 2, "CRITICAL", 2),
    ("warn", (), "WARNING", [("expires_soon", "warning")], 1, "WARNING", 1),
    ("crit", (), "CRITICAL", [("expires_soon", "critical")], 2, "CRITICAL", 2),
    ("future", (), "CRITICAL", [("not_yet_valid", "critical")], 2, "CRITICAL", 2),
    ("selfsigned", ("--servername", "localhost"), "OK", [("untrusted", "note")], 0, "WARNING", 1),
    ("private", (), "OK", [("untrusted", "note")], 0, "WARNING", 1),
    ("nointer", (), "OK", [("untrusted", "note")], 0, "WARNING", 1),
    ("named", (), "OK", [("name_mismatch", "note")], 0, "WARNING", 1),
    ("named", ("--servername", "other.test"), "OK", [("name_mismatch", "note")], 0, "WARNING", 1),
    ("wild", ("--servername", "x.a.test"), "OK", [], 0, "OK", 0),
    ("wild", ("--servername", "a.test"), "OK", [("name_mismatch", "note")], 0, "WARNING", 1),
    ("wild", ("--servername", "y.x.a.test"), "OK", [("name_mismatch", "note")], 0, "WARNING", 1),
    (
        "weak", ("--servername", "localhost"), "OK",
        [("untrusted", "note"), ("weak_key", "note"), ("weak_signature", "note")], 0, "WARNING", 1,
    ),
    ("v1", ("--servername", "localhost"), "OK", [("untrusted", "note")], 0, "WARNING", 1),
]  # fmt: skip


@pytest.mark.parametrize("verify", [False, True], ids=["notes", "verify"])
@pytest.mark.parametrize(
    ("name", "args", "status", "problems", "code", "v_status", "v_code"),
    CASES,
    ids=[f"{c[0]}{'-' + c[1][-1] if c[1] else ''}" for c in CASES],
)
def test_status_problems_and_exit_code(  # noqa: PLR0917 - pytest passes the parameters
    store: Path,
    world: World,
    capsys: pytest.CaptureFixture[str],
    name: str,
    args: tuple[str, ...],
    status: str,
    problems: list[tuple[str, str]],
    code: int,
    v_status: str,
    v_code: int,
    verify: bool,
) -> None:
    """Each kind of certificate gets its status, problems and exit code; --verify turns the
    trust, name and weak-crypto notes into warnings (and exit 1), and nothing else."""
    got_code, document = judged(capsys, world, name, *args, *(["--verify"] if verify else []))
    if verify:
        problems = [(k, "warning" if s == "note" else s) for k, s in problems]
    assert kinds(document) == problems
    assert document["status"] == (v_status if verify else status)
    assert got_code == (v_code if verify else code)


def test_expired_says_expired_with_the_date(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A past date reads "expired", never "expires", with the date and how long ago."""
    _code, document = judged(capsys, world, "expired")
    text = message(document, "expired")
    assert text.startswith("expired ")
    assert "expires" not in text
    assert f"{(NOW - timedelta(days=4, hours=2)):%Y-%m-%d}" in text
    assert "4 days ago" in text


def test_expiring_names_the_days_left(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expiring leaf says in how many days, within crit-days critical and warn-days warning."""
    _code, warn = judged(capsys, world, "warn")
    _code, crit = judged(capsys, world, "crit")
    assert message(warn, "expires_soon").startswith("expires in 10 days, ")
    assert message(crit, "expires_soon").startswith("expires in 3 days, ")


def test_untrusted_names_the_issuer_nobody_presented(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A private CA's root and a missing intermediate are named; a self-signed leaf says so."""
    _c, private = judged(capsys, world, "private")
    _c, missing = judged(capsys, world, "nointer")
    _c, alone = judged(capsys, world, "selfsigned", "--servername", "localhost")
    assert "'CN=private Test Root CA' is neither presented nor trusted" in message(
        private, "untrusted"
    )
    assert "'CN=nointer Test Issuing CA' is neither presented nor trusted" in message(
        missing, "untrusted"
    )
    assert message(alone, "untrusted") == "the leaf is self-signed and not trusted"


def test_ca_file_makes_the_private_ca_trusted(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ca-file adds the private root: the same server is OK without any problem, even with
    --verify, and its chain counts as verified."""
    ca = str(world.chains["private"].ca_file)
    code, document = judged(capsys, world, "private", "--ca-file", ca, "--verify")
    assert (code, document["status"], document["problems"]) == (0, "OK", [])
    _code, out, _err = run_cli(
        [
            "probe",
            "--format",
            "openmetrics",
            "--ca-file",
            ca,
            f"127.0.0.1:{world.ports['private']}",
        ],
        capsys,
    )
    assert f'trackssl_chain_verified{{target="127.0.0.1:{world.ports["private"]}"}} 1' in out


def test_environment_sets_verify_and_ca_file(
    store: Path, world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRACKSSL_VERIFY and TRACKSSL_CA_FILE are the twins of --verify and --ca-file in probe."""
    monkeypatch.setenv("TRACKSSL_VERIFY", "true")
    code, document = judged(capsys, world, "private")
    assert (code, kinds(document)) == (1, [("untrusted", "warning")])
    monkeypatch.setenv("TRACKSSL_CA_FILE", str(world.chains["private"].ca_file))
    code, document = judged(capsys, world, "private")
    assert (code, kinds(document)) == (0, [])


def test_bad_ca_file_is_a_usage_error_before_probing(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --ca-file without a PEM certificate, or missing, exits 3 and names it."""
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    code, out, err = run_cli(["probe", "--ca-file", str(empty), "127.0.0.1:1"], capsys)
    assert (code, out) == (3, "")
    assert "no PEM certificate" in err
    code, _out, err = run_cli(
        ["probe", "--ca-file", str(tmp_path / "none.pem"), "127.0.0.1:1"], capsys
    )
    assert code == 3
    assert "--ca-file" in err


def test_name_mismatch_messages(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """An IP literal is checked as the address, --servername as the name sent, each listed
    against the certificate's names."""
    _c, by_ip = judged(capsys, world, "named")
    _c, by_name = judged(capsys, world, "named", "--servername", "other.test")
    assert (
        message(by_ip, "name_mismatch")
        == "address 127.0.0.1 is not among the certificate's names (localhost)"
    )
    assert (
        message(by_name, "name_mismatch")
        == "name other.test is not among the certificate's names (localhost)"
    )


def test_weak_crypto_names_the_certificate(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """RSA-1024 and SHA-1 are named with the certificate that carries them; the verifier's
    refusal of the path says why, not a Rust debug dump."""
    _c, document = judged(capsys, world, "weak", "--servername", "localhost")
    assert message(document, "weak_key") == "CN=localhost has an RSA 1024-bit key (under 2048)"
    assert message(document, "weak_signature") == "CN=localhost is signed with SHA-1"
    assert message(document, "untrusted").startswith(
        "a path to a trusted CA exists but is refused: "
    )
    assert "AlgorithmIdentifier" not in message(document, "untrusted")


def test_a_certificate_the_verifier_refuses_is_judged_without_hiding_the_others(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version 1 intermediate (refused by cryptography's verifier) is reported as the
    untrusted reason; the other targets of the same run keep their own verdicts."""
    targets = [f"127.0.0.1:{world.ports[n]}" for n in ("v1", "good", "expired")]
    code, out, _err = run_cli(["probe", "--json", "--servername", "localhost", *targets], capsys)
    v1, good, expired = json.loads(out)
    assert "X509v3" in message(v1, "untrusted")
    assert good["status"] == "OK"
    assert [p["kind"] for p in good["problems"]] == []
    assert expired["status"] == "CRITICAL"
    assert code == 2


def test_failed_target_is_critical_with_its_error(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target that could not be probed is CRITICAL with problem ``failed`` (exit 2)."""
    port = closed_port()
    code, out, _err = run_cli(["probe", "--json", f"127.0.0.1:{port}"], capsys)
    (document,) = json.loads(out)
    assert code == 2
    assert document["status"] == "CRITICAL"
    assert kinds(document) == [("failed", "critical")]
    assert message(document, "failed").startswith("refused: ")
