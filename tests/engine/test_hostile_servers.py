"""Hostile servers on loopback: floods end at the deadline, undecodable chains are still read,
and nothing from outside reaches the terminal with control characters."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import der
from tests import hostile_servers as hostile
from tests.certs import Chain, make_chain
from tests.protocol_servers import scripted_server
from tests.tls_servers import GnutlsServer, TcpServer, running, server_context, tls_server
from trackssl_agent.engine.certificates import summarize, to_pem
from trackssl_agent.engine.probe import ProbeSettings, probe
from trackssl_agent.engine.probe_pool import probe_many
from trackssl_agent.engine.results import ErrorKind, ProbeResult
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.engine.transport import Conn, Deadline
from trackssl_agent.render import output

TIMEOUT = 2.0
SLACK = 1.5
"""The acceptance bound: a probe ends within its timeout plus this, however the server floods."""
SETTINGS = ProbeSettings(timeout=TIMEOUT)


def _probe_at_once(targets: list[str]) -> tuple[list[ProbeResult], float]:
    """Probe ``targets`` concurrently, one thread each; return results in order and wall time."""
    parsed = [parse_target(text) for text in targets]
    started = time.monotonic()
    results = dict(probe_many(parsed, SETTINGS, concurrency=len(parsed)))
    return [results[i] for i in range(len(parsed))], time.monotonic() - started


@pytest.fixture
def starttls_floods() -> Iterator[list[str]]:
    """The four STARTTLS floods of issue 9, as targets: 70,000 empty sieve lines, endless
    SMTP ``220-`` lines, endless untagged IMAP lines after STARTTLS, endless XMPP ``<a>``."""
    servers = [
        hostile.flood_server(b"\r\n", count=70_000),
        hostile.flood_server(b"220-mx.test flood\r\n"),
        hostile.flood_server(b"* x\r\n", greeting=b"* OK ready\r\n", after_command=True),
        hostile.flood_server(b"<a>", after_command=True),
    ]
    schemes = ["sieve", "smtp", "imap", "xmpp"]
    yield [f"{scheme}://{s.endpoint}" for scheme, s in zip(schemes, servers, strict=True)]
    for server in servers:
        server.close()


def test_four_starttls_floods_at_once_end_within_the_deadline(starttls_floods: list[str]) -> None:
    """Four flooding STARTTLS servers probed at once each end as a starttls error within
    --timeout + 1.5 s: they neither outlast the deadline nor stretch each other."""
    results, elapsed = _probe_at_once(starttls_floods)
    assert elapsed < TIMEOUT + SLACK
    for result in results:
        assert result.error is not None
        assert result.error.kind is ErrorKind.STARTTLS, result.error
        assert result.elapsed_ms < (TIMEOUT + SLACK) * 1000


def test_four_other_floods_at_once_end_within_the_deadline() -> None:
    """Endless empty sieve lines, a line that never ends, endless FTP 1xx preliminary
    replies, and endless TLS HelloRequest records, at once, end within --timeout + 1.5 s."""
    servers = [
        hostile.flood_server(b"\r\n"),
        hostile.flood_server(b"x"),
        hostile.flood_server(b"120 wait\r\n"),
        hostile.tls_flood_server("hello-requests"),
    ]
    targets = [f"sieve://{servers[0].endpoint}", f"smtp://{servers[1].endpoint}"]
    targets += [f"ftp://{servers[2].endpoint}", servers[3].endpoint]
    try:
        results, elapsed = _probe_at_once(targets)
    finally:
        for server in servers:
            server.close()
    assert elapsed < TIMEOUT + SLACK
    kinds = [r.error.kind if r.error else None for r in results]
    assert kinds == [ErrorKind.STARTTLS] * 3 + [ErrorKind.HANDSHAKE]


@pytest.mark.parametrize(
    ("server", "scheme", "words"),
    [
        (lambda: hostile.flood_server(b"\r\n", count=70_000), "sieve", "more than 256 KiB"),
        (lambda: hostile.flood_server(b"220-flood\r\n"), "smtp", "never ends"),
        (lambda: hostile.flood_server(b"x"), "smtp", "overlong line"),
        (lambda: hostile.flood_server(b"<a>", after_command=True), "xmpp", "more than 256 KiB"),
    ],
)
def test_flood_is_named_in_the_error(server: object, scheme: str, words: str) -> None:
    """Each flood ends as a starttls error that says what the server did."""
    assert callable(server)
    with running(server()) as flood:
        result = probe(parse_target(f"{scheme}://{flood.endpoint}"), SETTINGS)
    assert result.error is not None
    assert result.error.kind is ErrorKind.STARTTLS
    assert words in result.error.message


def test_slow_line_flood_ends_at_the_deadline() -> None:
    """Empty sieve lines sent slower than the byte budget runs out end at the deadline, as
    a timeout: the deadline is checked for every line, not only when the buffer is empty."""

    def handle(conn: socket.socket) -> None:
        stop = time.monotonic() + 20
        while time.monotonic() < stop:
            conn.sendall(b"\r\n" * 20)
            time.sleep(0.01)

    with running(TcpServer(handle)) as server:
        result = probe(parse_target(f"sieve://{server.endpoint}"), SETTINGS)
    assert result.error is not None
    assert result.error.kind is ErrorKind.TIMEOUT, result.error
    assert TIMEOUT * 1000 <= result.elapsed_ms < (TIMEOUT + SLACK) * 1000


def test_buffered_lines_are_not_read_after_the_deadline() -> None:
    """A line already in the buffer is not handed out once the deadline has passed."""
    now = [0.0]

    def handle(conn: socket.socket) -> None:
        conn.sendall(b"one\r\ntwo\r\n")
        time.sleep(5)

    with running(TcpServer(handle)) as s:
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        with sock:
            conn = Conn(sock, Deadline(1.0, clock=lambda: now[0]))
            assert conn.read_line() == b"one\r\n"
            now[0] = 2.0
            with pytest.raises(TimeoutError):
                conn.read_line()
            assert conn.pending() == b"two\r\n"


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("hello-requests", "more than 1024 KiB"),
        ("certificate-fragments", "excessive message size"),
        ("garbage", "TLS handshake failed"),
    ],
)
def test_endless_tls_records_end_as_a_handshake_error(kind: str, words: str) -> None:
    """A direct-TLS server streaming records without end (HelloRequests OpenSSL skips, the
    fragments of a 16 MiB Certificate, noise after ServerHello) ends quickly and says so."""
    with running(hostile.tls_flood_server(kind)) as server:
        started = time.monotonic()
        result = probe(parse_target(server.endpoint), SETTINGS)
        elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + SLACK
    assert result.error is not None
    assert result.error.kind is ErrorKind.HANDSHAKE
    assert words in result.error.message


def test_cli_probe_timeout_with_four_floods(starttls_floods: list[str], tmp_path: Path) -> None:
    """``trackssl-agent probe --timeout 2`` as a process against four floods at once ends
    within 2 + 1.5 s (plus interpreter start), exit 2, each a starttls error."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "probe", "--json", "--timeout", "2",
         *starttls_floods],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=30,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    documents = json.loads(done.stdout)
    assert [d["error"]["kind"] for d in documents] == ["starttls"] * 4
    assert all(d["elapsed_ms"] < (TIMEOUT + SLACK) * 1000 for d in documents)
    assert elapsed < TIMEOUT + SLACK + 1.5  # the interpreter and imports start in about 1 s


# --- part 7: a chain OpenSSL cannot decode --------------------------------------------------


@pytest.fixture(scope="module")
def bad_chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """A chain whose leaf subject is a UTF8String holding invalid UTF-8, as PEM files."""
    directory = tmp_path_factory.mktemp("bad-utf8")
    chain = make_chain(directory, name="bad")
    leaf = der.invalid_utf8_subject(chain.ders[0])
    ders = (leaf, *chain.ders[1:])
    cert_file = directory / "bad-utf8.crt"
    cert_file.write_text("".join(to_pem(d) for d in ders))
    return Chain(cert_file, chain.key_file, chain.ca_file, ders, chain.leaf)


@pytest.mark.parametrize("record_size", [16384, 300, 7])
def test_undecodable_chain_is_read_from_the_certificate_message(
    bad_chain: Chain, record_size: int
) -> None:
    """Under TLS 1.2 a chain OpenSSL rejects (``ASN1 lib``) is read from the Certificate
    message as sent, however the records cut the messages: ok, with a warning."""
    with running(hostile.raw_tls12_server(bad_chain.ders, record_size=record_size)) as server:
        result = probe(parse_target(server.endpoint), SETTINGS)
    assert result.ok, result.error
    assert result.chain == bad_chain.ders
    assert result.tls_version == "TLSv1.2"
    assert "asn1 lib" in result.warnings[0]
    assert "Certificate message" in result.warnings[0]


def test_undecodable_chain_from_a_real_tls12_server(bad_chain: Chain) -> None:
    """gnutls-serv (which loads the certificate) under TLS 1.2: the chain is reported, and
    the JSON has ok true, a null subject and a warning naming both failures."""
    server = GnutlsServer(bad_chain, "NORMAL:-VERS-ALL:+VERS-TLS1.2")
    try:
        result = probe(parse_target(f"127.0.0.1:{server.port}"), SETTINGS)
    finally:
        server.close()
    assert result.chain == bad_chain.ders
    document = output.result_json(result, datetime.now(UTC))
    assert document["ok"] is True
    assert document["certificate"]["subject"] is None
    assert document["certificate"]["issuer"] == bad_chain.leaf.issuer.rfc4514_string()
    assert "Certificate message" in document["warning"]
    assert "certificate subject could not be parsed" in document["warning"]
    assert "subject     None" in output.render_text(result, datetime.now(UTC))


def test_undecodable_certificate_under_tls13_is_said_plainly(bad_chain: Chain) -> None:
    """Under TLS 1.3 the Certificate travels encrypted: the error says the certificate
    could not be decoded, and why no chain can be reported."""
    server = GnutlsServer(bad_chain, "NORMAL:-VERS-ALL:+VERS-TLS1.3")
    try:
        result = probe(parse_target(f"127.0.0.1:{server.port}"), SETTINGS)
    finally:
        server.close()
    assert result.error is not None
    assert result.error.kind is ErrorKind.HANDSHAKE
    assert "certificate could not be decoded" in result.error.message
    assert "TLS 1.3" in result.error.message


def test_cryptography_loads_the_undecodable_leaf_and_the_summary_holds(bad_chain: Chain) -> None:
    """The summary of a leaf with an undecodable subject nulls the subject with a warning
    and keeps every other field."""
    summary = summarize(bad_chain.ders[0])
    assert summary.subject is None
    assert summary.issuer is not None
    assert summary.not_after is not None
    assert summary.sans == ("localhost", "127.0.0.1", "::1")
    assert any("subject" in warning for warning in summary.warnings)


# --- text from outside on the terminal ------------------------------------------------------


def test_certificate_fields_are_printable_in_text_output(tmp_path: Path) -> None:
    """A subject holding CR, LF and ESC is shown escaped on one line in the text output;
    the JSON keeps the value as it is, escaped by JSON."""
    chain = make_chain(tmp_path, name="ctl", intermediate=False)
    leaf = der.control_characters_subject(chain.ders[0])
    cert_file = tmp_path / "ctl.crt"
    cert_file.write_text(to_pem(leaf))
    served = Chain(cert_file, chain.key_file, chain.ca_file, (leaf,), chain.leaf)
    with running(tls_server(server_context(served))) as server:
        result = probe(parse_target(server.endpoint), SETTINGS)
    assert result.ok, result.error
    text = output.render_text(result, datetime.now(UTC))
    assert "\x1b" not in text
    assert "\r" not in text
    subject_lines = [line for line in text.splitlines() if line.startswith("  subject")]
    assert subject_lines == ["  subject     CN=evil\\r\\n\\x1b[31mred\\x1b[0m"]
    document = json.dumps(output.result_json(result, datetime.now(UTC)))
    assert "evil\\r\\n\\u001b[31mred" in document


def test_server_words_in_errors_have_no_control_characters() -> None:
    """A refusal carrying ESC sequences and CRs is quoted without them, in the message and
    in the text output."""
    greeting = b"554 \x1b[2J\x1b[31mgo away\rnow\x07\r\n"
    with running(scripted_server(greeting, [])) as server:
        result = probe(parse_target(f"smtp://{server.endpoint}"), SETTINGS)
    assert result.error is not None
    assert "go away now" in result.error.message
    text = output.render_text(result, datetime.now(UTC))
    assert not any(ch in text[:-1] for ch in "\x1b\r\n\x07")


def test_sslv3_server_chain_is_read_from_the_certificate_message(bad_chain: Chain) -> None:
    """An SSLv3 server (which OpenSSL 3 refuses at its ServerHello) still has its chain
    reported from the cleartext Certificate message, with version SSLv3 and a warning."""
    with running(hostile.raw_tls12_server(bad_chain.ders, version=0x0300)) as server:
        result = probe(parse_target(server.endpoint), SETTINGS)
    assert result.ok, result.error
    assert result.chain == bad_chain.ders
    assert result.tls_version == "SSLv3"
    assert "Certificate message" in result.warnings[0]
