"""The ``probe`` command: rendering, JSON of SPEC section 4, PEM, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tls_servers
from tests.certs import Chain, make_chain, self_signed
from tests.cli_helpers import agent_environ, run_cli
from tests.listeners import closed_port
from trackssl_agent import __version__
from trackssl_agent.engine.certificates import to_pem

SPEC_KEYS = {
    "target", "host", "port", "starttls", "servername", "address", "ok", "error",
    "tls_version", "cipher", "chain", "certificate", "elapsed_ms", "warning",
    "status", "problems",  # SPEC section 4a: probe's results are judged
}  # fmt: skip
CERT_KEYS = {
    "subject", "issuer", "serial", "sha256", "not_before", "not_after", "days_remaining",
    "sans", "key", "signature_algorithm", "self_signed",
}  # fmt: skip


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, tuple[int, Chain]]]:
    """TLS servers whose leaves expire in 3, 10 and 100 days: days -> (port, chain)."""
    base = tmp_path_factory.mktemp("expiry")
    running: dict[int, tuple[int, Chain]] = {}
    started: list[tls_servers.TcpServer] = []
    for days in (3, 10, 100):
        chain = make_chain(base, name=f"d{days}", days=days + 0.5)
        server = tls_servers.tls_server(tls_servers.server_context(chain))
        started.append(server)
        running[days] = (server.port, chain)
    yield running
    for server in started:
        server.close()


@pytest.mark.parametrize(("days", "code"), [(100, 0), (10, 1), (3, 2)])
def test_exit_code_follows_expiry(
    servers: dict[int, tuple[int, Chain]], days: int, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """100 days left exits 0, 10 days (within warn 30) exits 1, 3 days (within crit 7) exits 2."""
    port, _ = servers[days]
    result = run_cli(["probe", f"127.0.0.1:{port}"], capsys)
    assert result[0] == code
    assert f"{days} days left" in result[1]


def test_thresholds_are_options(
    servers: dict[int, tuple[int, Chain]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--warn-days and --crit-days move the bounds."""
    port, _ = servers[10]
    assert run_cli(["probe", f"127.0.0.1:{port}", "--warn-days", "5"], capsys)[0] == 0
    assert run_cli(["probe", f"127.0.0.1:{port}", "--crit-days", "11"], capsys)[0] == 2


def test_json_matches_spec(
    servers: dict[int, tuple[int, Chain]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one array with SPEC section 4's objects, in the order given."""
    port, chain = servers[100]
    refused = closed_port()
    code, out, _ = run_cli(["probe", "--json", f"127.0.0.1:{port}", f"127.0.0.1:{refused}"], capsys)
    assert code == 2  # one target could not be probed
    document = json.loads(out)
    assert [d["port"] for d in document] == [port, refused]
    good, bad = document
    assert set(good) == SPEC_KEYS
    assert set(good["certificate"]) == CERT_KEYS
    assert good["ok"] is True
    assert good["error"] is None
    assert good["chain"] == [to_pem(d) for d in chain.ders]
    assert good["certificate"]["days_remaining"] == 100
    assert good["certificate"]["not_after"].endswith("Z")
    assert good["starttls"] is None
    assert bad["ok"] is False
    assert bad["chain"] == []
    assert bad["certificate"] is None
    assert bad["error"]["kind"] == "refused"
    assert bad["error"]["message"]


def test_pem_prints_only_the_chain(
    servers: dict[int, tuple[int, Chain]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--pem prints the presented chain, leaf first, and nothing else."""
    port, chain = servers[100]
    code, out, _ = run_cli(["probe", "--pem", f"127.0.0.1:{port}"], capsys)
    assert code == 0
    assert out == "".join(to_pem(d) for d in chain.ders)


@pytest.mark.parametrize(
    "args",
    [
        ["probe", "bad host"],
        ["probe", "host:70000"],
        ["probe", "gopher://host"],
        ["probe", "--no-such-option", "host"],
        ["probe"],
        ["probe", "--timeout", "-1", "host"],
        ["probe", "--starttls", "carrier-pigeon", "host"],
        ["probe", "-4", "-6", "host"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_3(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad targets and click's own usage errors exit 3 with a message, probing nothing."""
    code, out, err = run_cli(args, capsys)
    assert code == 3
    assert out == ""
    assert err.strip()


def test_invalid_target_message_quotes_text(capsys: pytest.CaptureFixture[str]) -> None:
    """The usage error names the offending target text."""
    code, _, err = run_cli(["probe", "ok.example", "bad:0"], capsys)
    assert code == 3
    assert "'bad:0'" in err
    assert len(err.strip().splitlines()) == 1


def test_version_and_module_entry() -> None:
    """``python -m trackssl_agent --version`` prints the version."""
    done = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "--version"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout.strip() == f"trackssl-agent {__version__}"


def test_silent_listener_with_timeout_2_returns_after_its_deadline(tmp_path: Path) -> None:
    """A full process probing a listener that never answers, --timeout 2, ends within the
    deadline plus the interpreter's start (3 s of room for a loaded runner; the listener
    would hold it for an hour)."""
    with tls_servers.running(tls_servers.silent_server()) as server:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "trackssl_agent", "probe", "--timeout", "2", server.endpoint],
            capture_output=True, text=True, check=False, cwd=tmp_path,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert "timeout" in done.stdout
    assert elapsed < 2 + 3


def test_text_output_names_what_a_person_needs(
    servers: dict[int, tuple[int, Chain]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The readable summary shows subject, SANs, issuer, validity, key, fingerprint, chain."""
    port, _ = servers[100]
    _, out, _ = run_cli(["probe", f"127.0.0.1:{port}"], capsys)
    needles = (
        "subject     CN=localhost", "SANs        localhost", "issuer", "valid", "sha256",
        "key         RSA 2048", "1. CN=localhost", "2. CN=d100 Test Issuing CA", "TLSv1.3",
        "127.0.0.1",
    )  # fmt: skip
    for needle in needles:
        assert needle in out


# -- messages that mislead (issue 22) ---------------------------------------------------


def agent(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m trackssl_agent ARGS`` in a clean environment plus ``extra``."""
    return subprocess.run(
        [sys.executable, "-m", "trackssl_agent", *args], env=agent_environ(**extra), cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_family_against_a_literal_is_said_alike_by_probe_and_discover(tmp_path: Path) -> None:
    """-6 with an IPv4 literal (and -4 with an IPv6 one) is a usage error, exit 3, in the
    same words from probe and discover: the option given and what the address is, never
    a DNS failure."""
    port = closed_port()
    probed = agent("probe", "-6", f"127.0.0.1:{port}", cwd=tmp_path)
    scanned = agent("discover", "-6", "127.0.0.1", "--ports", str(port), cwd=tmp_path)
    said = "-6 given but 127.0.0.1 is an IPv4 address; drop -6 to"
    assert (probed.returncode, scanned.returncode) == (3, 3)
    assert probed.stderr == f"trackssl-agent: {said} probe it\n"
    assert scanned.stderr == f"trackssl-agent: discover: {said} scan it\n"
    v6 = agent("probe", "-4", f"[::1]:{port}", cwd=tmp_path)
    assert v6.returncode == 3
    assert v6.stderr == "trackssl-agent: -4 given but ::1 is an IPv6 address; drop -4 to probe it\n"


def test_a_family_against_a_literal_in_a_targets_file_fails_that_target(tmp_path: Path) -> None:
    """In a targets file the same mismatch fails that target only, in the same words."""
    targets = tmp_path / "targets.txt"
    targets.write_text(f"127.0.0.1:{closed_port()}\n")
    done = agent("check-once", "-6", "--targets", str(targets), "--json", cwd=tmp_path)
    assert done.returncode == 2
    [result] = json.loads(done.stdout)
    assert result["error"] == {
        "kind": "dns",
        "message": "-6 given but 127.0.0.1 is an IPv4 address; drop -6 to probe it",
    }


def test_the_serial_is_printed_as_openssl_prints_it(tmp_path: Path) -> None:
    """A serial of an odd number of hex digits (0xa1b2c) keeps its leading zero, as
    ``openssl x509 -serial`` prints it (lowercase, as the JSON's other hex)."""
    chain = self_signed(tmp_path, serial=0xA1B2C)
    shown = subprocess.run(
        ["openssl", "x509", "-serial", "-noout", "-in", str(chain.cert_file)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert shown == "serial=0A1B2C"
    with tls_servers.running(tls_servers.tls_server(tls_servers.server_context(chain))) as server:
        done = agent("probe", "--json", server.endpoint, cwd=tmp_path)
        text = agent("probe", server.endpoint, cwd=tmp_path)
    [result] = json.loads(done.stdout)
    assert result["certificate"]["serial"] == "0a1b2c"
    assert "0a1b2c" in text.stdout


def test_probe_applies_trackssl_allow_and_trackssl_timeout(tmp_path: Path) -> None:
    """probe honours TRACKSSL_ALLOW (a target outside it is not contacted) and
    TRACKSSL_TIMEOUT (a bad value is refused naming it; a good one bounds the probe), and
    its --help says so."""
    with tls_servers.running(tls_servers.silent_server()) as server:
        denied = agent("probe", "--json", server.endpoint, cwd=tmp_path,
                       TRACKSSL_ALLOW="127.0.0.2/32")  # fmt: skip
        assert server.accepted_before_now() == 0
        bad = agent("probe", server.endpoint, cwd=tmp_path, TRACKSSL_TIMEOUT="soon")
        quick = agent("probe", "--json", server.endpoint, cwd=tmp_path, TRACKSSL_TIMEOUT="0.5")
    assert denied.returncode == 2
    assert json.loads(denied.stdout)[0]["error"]["kind"] == "denied"
    assert bad.returncode == 3
    assert bad.stderr.startswith("trackssl-agent: environment variable TRACKSSL_TIMEOUT:")
    [result] = json.loads(quick.stdout)
    assert result["error"]["kind"] == "timeout"
    assert result["elapsed_ms"] < 5000  # the default deadline is 10 s
    shown = " ".join(agent("probe", "--help", cwd=tmp_path).stdout.split())
    assert "From the environment it applies TRACKSSL_TIMEOUT, TRACKSSL_ALLOW" in shown
