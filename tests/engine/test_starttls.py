"""STARTTLS dialogues end to end: real servers on loopback, chain captured after each dialogue."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import protocol_servers as servers
from tests.certs import Chain, make_chain
from tests.cli_helpers import run_cli
from tests.tls_servers import TcpServer, server_context, silent_server
from trackssl_agent.engine.certificates import to_pem
from trackssl_agent.engine.probe import ProbeSettings, probe
from trackssl_agent.engine.protocols import SCHEMES, Protocol
from trackssl_agent.engine.results import ErrorKind, ProbeResult
from trackssl_agent.engine.targets import Target, parse_target

FAST = ProbeSettings(timeout=5)

pytestmark = pytest.mark.servers


# --- servers, started once per module -------------------------------------------------------


@pytest.fixture(scope="module")
def spec_chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """The chain the spec-written servers (nntp, rdp, mssql, scripted) present."""
    return make_chain(tmp_path_factory.mktemp("spec"), name="spec")


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[servers.Running]:
    """aiosmtpd SMTP with STARTTLS."""
    with servers.aiosmtpd() as running:
        yield running


@pytest.fixture(scope="module")
def lmtp_server() -> Iterator[servers.Running]:
    """aiosmtpd LMTP with STARTTLS."""
    with servers.aiosmtpd(lmtp=True) as running:
        yield running


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[servers.Running]:
    """dovecot: imap, pop3 and sieve."""
    with servers.dovecot() as running:
        yield running


@pytest.fixture(scope="module")
def vsftpd_server() -> Iterator[servers.Running]:
    """vsftpd with AUTH TLS."""
    with servers.vsftpd() as running:
        yield running


@pytest.fixture(scope="module")
def slapd_server() -> Iterator[servers.Running]:
    """slapd on a port of its own."""
    with servers.slapd() as running:
        yield running


@pytest.fixture(scope="module")
def prosody_server() -> Iterator[servers.Running]:
    """prosody c2s and s2s for the domain localhost."""
    with servers.prosody() as running:
        yield running


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[servers.Running]:
    """A postmaster on a port of its own."""
    with servers.postgres() as running:
        yield running


@pytest.fixture(scope="module")
def mariadb_server() -> Iterator[servers.Running]:
    """MariaDB with --ssl-cert."""
    with servers.mariadb() as running:
        yield running


def _spec(server: TcpServer, name: str, chain: Chain) -> Iterator[servers.Running]:
    with servers.serving(server):
        yield servers.Running({name: server.port}, chain)


@pytest.fixture(scope="module")
def nntp_server(spec_chain: Chain) -> Iterator[servers.Running]:
    """The NNTP server written from RFC 4642."""
    yield from _spec(servers.nntp_server(spec_chain), "nntp", spec_chain)


@pytest.fixture(scope="module")
def rdp_server() -> Iterator[servers.Running]:
    """xrdp negotiating TLS."""
    with servers.xrdp() as running:
        yield running


def test_rdp_spec_server_negotiates_tls(spec_chain: Chain) -> None:
    """The MS-RDPBCGR test server used for refusals also completes a TLS negotiation."""
    with servers.serving(servers.rdp_server(spec_chain)) as server:
        result = probe(parse_target(f"rdp://{server.endpoint}"), FAST)
    assert result.chain == spec_chain.ders


@pytest.fixture(scope="module")
def mssql_server(spec_chain: Chain) -> Iterator[servers.Running]:
    """The SQL Server pre-login written from MS-TDS."""
    yield from _spec(servers.mssql_server(spec_chain), "mssql", spec_chain)


# scheme -> (fixture, service name in its ports, host to dial)
CASES = {
    "smtp": ("smtp_server", "smtp", "127.0.0.1"),
    "submission": ("smtp_server", "smtp", "127.0.0.1"),
    "lmtp": ("lmtp_server", "lmtp", "127.0.0.1"),
    "imap": ("dovecot_server", "imap", "127.0.0.1"),
    "pop3": ("dovecot_server", "pop3", "127.0.0.1"),
    "sieve": ("dovecot_server", "sieve", "127.0.0.1"),
    "ftp": ("vsftpd_server", "ftp", "127.0.0.1"),
    "ldap": ("slapd_server", "ldap", "127.0.0.1"),
    # the stream's to= must name prosody's VirtualHost, so these dial a name
    "xmpp": ("prosody_server", "xmpp", "localhost"),
    "xmpp-server": ("prosody_server", "xmpp-server", "localhost"),
    "nntp": ("nntp_server", "nntp", "127.0.0.1"),
    "postgres": ("postgres_server", "postgres", "127.0.0.1"),
    "mysql": ("mariadb_server", "mysql", "127.0.0.1"),
    "rdp": ("rdp_server", "rdp", "127.0.0.1"),
    "mssql": ("mssql_server", "mssql", "127.0.0.1"),
}


def _server(request: pytest.FixtureRequest, scheme: str) -> tuple[servers.Running, str]:
    fixture, service, host = CASES[scheme]
    running: servers.Running = request.getfixturevalue(fixture)
    port = running.ports[service]
    return running, f"{host}:{port}"


def _assert_chain(result: ProbeResult, running: servers.Running) -> None:
    assert result.error is None, result.error
    assert running.chain is not None
    assert result.chain == running.chain.ders


def test_every_protocol_has_a_case() -> None:
    """Each STARTTLS protocol is covered by an end-to-end case below."""
    covered = {SCHEMES[scheme][0] for scheme in CASES}
    assert covered == set(Protocol)


@pytest.mark.parametrize("scheme", sorted(CASES))
def test_scheme_selects_dialogue_and_gets_chain(
    request: pytest.FixtureRequest, scheme: str
) -> None:
    """``scheme://host:port`` runs the scheme's dialogue and captures exactly the chain."""
    running, endpoint = _server(request, scheme)
    target = parse_target(f"{scheme}://{endpoint}")
    assert target.starttls is not None
    result = probe(target, FAST)
    _assert_chain(result, running)


@pytest.mark.parametrize("scheme", sorted(set(CASES) - {"submission"}))
def test_starttls_option_gets_chain(request: pytest.FixtureRequest, scheme: str) -> None:
    """``--starttls NAME`` on a non-standard port runs that dialogue and captures the chain."""
    running, endpoint = _server(request, scheme)
    target = parse_target(endpoint, starttls=scheme)
    assert target.starttls == Protocol(scheme)
    result = probe(target, FAST)
    _assert_chain(result, running)


def _at(target: Target, running: servers.Running, service: str) -> Target:
    """``target`` as parsed (its dialogue chosen by its own port), dialled at the port the
    test's server holds: the well-known ports may belong to a packaged daemon or to a
    second run of the suite, and the probe picks its dialogue from ``starttls`` alone."""
    return dataclasses.replace(target, port=running.ports[service])


def test_ldap_auto_selected_on_port_389(slapd_server: servers.Running) -> None:
    """A bare 127.0.0.1:389 is LDAP by the port table and gets slapd's chain via StartTLS."""
    target = parse_target("127.0.0.1:389")
    assert target.starttls is Protocol.LDAP
    _assert_chain(probe(_at(target, slapd_server, "ldap"), FAST), slapd_server)


def test_postgres_auto_selected_on_port_5432(postgres_server: servers.Running) -> None:
    """A bare 127.0.0.1:5432 is PostgreSQL by the port table and gets its chain."""
    target = parse_target("127.0.0.1:5432")
    assert target.starttls is Protocol.POSTGRES
    _assert_chain(probe(_at(target, postgres_server, "postgres"), FAST), postgres_server)


def test_starttls_none_on_5432_fails_as_direct_tls(postgres_server: servers.Running) -> None:
    """``--starttls none`` sends a bare ClientHello, which PostgreSQL 15 answers by closing."""
    target = parse_target("127.0.0.1:5432", starttls="none")
    assert target.starttls is None
    result = probe(_at(target, postgres_server, "postgres"), FAST)
    assert result.error is not None
    assert result.error.kind is not ErrorKind.STARTTLS
    assert not result.chain


# --- refusals: kind starttls with the server's own words -------------------------------------


def _refused(target_text: str, *, starttls: str = "auto") -> str:
    result = probe(parse_target(target_text, starttls=starttls), FAST)
    assert result.error is not None
    assert result.error.kind is ErrorKind.STARTTLS, result.error
    assert not result.chain
    return result.error.message


def test_smtp_without_starttls_quotes_refusal() -> None:
    """aiosmtpd without a TLS context: its 454 reply is the error message."""
    with servers.aiosmtpd(tls=False) as running:
        message = _refused(f"smtp://127.0.0.1:{running.ports['smtp']}")
    assert "454 TLS not available" in message


def test_ldap_without_tls_quotes_result() -> None:
    """slapd without TLS settings: its resultCode and diagnostic message are the error."""
    with servers.slapd(tls=False) as running:
        message = _refused(f"ldap://127.0.0.1:{running.ports['ldap']}")
    assert "protocolError (2)" in message
    assert "unsupported extended operation" in message


def test_xmpp_unknown_domain_quotes_stream_error(prosody_server: servers.Running) -> None:
    """A stream to a domain prosody does not host ends in its host-unknown stream error."""
    port = prosody_server.ports["xmpp"]
    assert "host-unknown" in _refused(f"xmpp://127.0.0.1:{port}")


def test_nntp_refusal_quotes_580(spec_chain: Chain) -> None:
    """An NNTP server without TLS answers 580, which is quoted (RFC 4642 server)."""
    with servers.serving(servers.nntp_server(None)) as server:
        assert "580 Can not initiate TLS negotiation" in _refused(f"nntp://{server.endpoint}")


def test_rdp_standard_security_only_is_starttls_error() -> None:
    """xrdp with security_layer=rdp selects standard RDP security, which is a refusal of TLS."""
    with servers.xrdp(security_layer="rdp") as running:
        message = _refused(f"rdp://127.0.0.1:{running.ports['rdp']}")
    assert "standard RDP security" in message


def test_rdp_negotiation_failure_is_named(spec_chain: Chain) -> None:
    """RDP_NEG_FAILURE SSL_NOT_ALLOWED_BY_SERVER (2) is named (MS-RDPBCGR server)."""
    with servers.serving(servers.rdp_server(spec_chain, failure=2)) as server:
        message = _refused(f"rdp://{server.endpoint}")
    assert "SSL_NOT_ALLOWED_BY_SERVER (2)" in message


def test_mssql_encrypt_not_sup_is_named(spec_chain: Chain) -> None:
    """A PRELOGIN response with ENCRYPT_NOT_SUP is named (MS-TDS server)."""
    with servers.serving(servers.mssql_server(spec_chain, encryption=0x02)) as server:
        assert "ENCRYPT_NOT_SUP" in _refused(f"mssql://{server.endpoint}")


MYSQL_NO_SSL_GREETING = (
    b"\x0a5.5.5-10.11.6-MariaDB\x00"
    + b"\x01\x00\x00\x00"  # connection id
    + b"abcdefgh\x00"  # auth data part 1, filler
    + b"\xff\xf7"  # capabilities: everything but CLIENT_SSL (0x0800)
    + b"\x2d\x02\x00\xff\x81\x15"
    + b"\x00" * 10
    + b"ijklmnopqrst\x00mysql_native_password\x00"
)


def _mysql_packet(payload: bytes) -> bytes:
    """A MySQL packet with sequence id 0."""
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


# protocol, greeting, replies to each client command, words the error must quote
REFUSALS = [
    ("smtp", b"554 mx.test no service for you\r\n", [], "554 mx.test no service for you"),
    ("smtp", b"220 mx\r\n", [b"250-mx\r\n250 SIZE 1000\r\n", b"502 5.5.1 not here\r\n"],
     "502 5.5.1 not here"),
    ("lmtp", b"220 lmtp\r\n", [b"500 5.5.1 LHLO unknown\r\n"], "500 5.5.1 LHLO unknown"),
    ("imap", b"* OK ready\r\n", [b"* BAD noise\r\na1 NO [PRIVACYREQUIRED] not now\r\n"],
     "a1 NO [PRIVACYREQUIRED] not now"),
    ("imap", b"* PREAUTH logged in as you\r\n", [], "PREAUTH logged in as you"),
    ("pop3", b"+OK pop ready\r\n", [b"-ERR STLS disabled\r\n"], "-ERR STLS disabled"),
    ("ftp", b"220-welcome\r\n  terms apply\r\n220 ready\r\n", [b"534 TLS refused by policy\r\n"],
     "534 TLS refused by policy"),
    ("sieve", b'"IMPLEMENTATION" "x"\r\nOK "ready"\r\n', [b'NO "TLS unavailable"\r\n'],
     'NO "TLS unavailable"'),
    ("xmpp", b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
     b" xmlns='jabber:client' version='1.0'><stream:features><mechanisms xmlns="
     b"'urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>"
     b"</stream:features>", [], "does not offer STARTTLS"),
    ("postgres", b"", [b"N"], "answered 'N'"),
    ("mysql", _mysql_packet(MYSQL_NO_SSL_GREETING), [], "5.5.5-10.11.6-MariaDB"),
    ("mysql", _mysql_packet(b"\xff\x69\x04Host '127.0.0.1' is blocked"), [],
     "error 1129: Host '127.0.0.1' is blocked"),
]  # fmt: skip


@pytest.mark.parametrize(("protocol", "greeting", "replies", "words"), REFUSALS)
def test_refusal_quotes_server_words(
    protocol: str, greeting: bytes, replies: list[bytes], words: str
) -> None:
    """A refusal or absence of STARTTLS in each protocol's words is kind starttls, quoted."""
    if protocol == "xmpp":
        greeting, replies = b"", [greeting]  # the client speaks first in XMPP
    with servers.serving(servers.scripted_server(greeting, replies)) as server:
        assert words in _refused(server.endpoint, starttls=protocol)


# --- reply framing, injection, deadlines ---------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "greeting", "replies"),
    [
        ("smtp", b"220-mx.test ESMTP\r\n220-second line\r\n220 last line\r\n",
         [b"250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
          b"220 2.0.0 ready\r\n"]),
        ("ftp", b"120 soon\r\n220-hello\r\nfree text line\r\n 220 not the end\r\n220 ready\r\n",
         [b"234 AUTH TLS OK.\r\n"]),
        ("sieve", b'"IMPLEMENTATION" "x"\r\n"STARTTLS"\r\nOK\r\n', [b"OK \"go\"\r\n"]),
    ],
)  # fmt: skip
def test_multiline_replies_are_read_whole(
    spec_chain: Chain, protocol: str, greeting: bytes, replies: list[bytes]
) -> None:
    """Multi-line greetings and replies (``220-``, free FTP text, 1xx) are read to their end."""
    tls = server_context(spec_chain)
    with servers.serving(servers.scripted_server(greeting, replies, tls=tls)) as server:
        result = probe(parse_target(server.endpoint, starttls=protocol), FAST)
    assert result.error is None, result.error
    assert result.chain == spec_chain.ders


def test_smtp_waits_for_each_reply_and_greets_as_itself(spec_chain: Chain) -> None:
    """EHLO goes only after the whole greeting, STARTTLS only after the whole EHLO reply,
    and the EHLO name is the client's own, never the server's."""
    received: list[bytes] = []
    replies = [b"250-mx.test\r\n250 STARTTLS\r\n", b"220 go ahead\r\n"]
    tls = server_context(spec_chain)
    server = servers.scripted_server(
        b"220 mx.test\r\n", replies, tls=tls, received=received, delay=0.2
    )
    with servers.serving(server):
        result = probe(parse_target(f"smtp://localhost:{server.port}"), FAST)
    assert result.chain == spec_chain.ders
    assert len(received) == 2
    # RFC 5321 4.1.4: this host's FQDN when its name has one (``localhost.localdomain`` on
    # RHEL), else the address literal of the connection; never the name that was dialled.
    own = socket.gethostname()
    fqdn = "." in own and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9]", own)
    assert received[0] == f"EHLO {own if fqdn else '[127.0.0.1]'}\r\n".encode()
    assert received[1] == b"STARTTLS\r\n"


def test_endless_multiline_greeting_is_cut_off() -> None:
    """A greeting of endless ``220-`` lines ends as a starttls error, not unbounded reading."""
    greeting = b"220-mx.test\r\n" * 8000
    with servers.serving(servers.scripted_server(greeting, [])) as server:
        assert "never ends" in _refused(f"smtp://{server.endpoint}")


def test_plaintext_queued_after_go_ahead_is_rejected() -> None:
    """Bytes queued behind the 220 to STARTTLS are refused as possible injection."""
    with servers.serving(servers.injecting_server()) as server:
        message = _refused(f"smtp://{server.endpoint}")
    assert "unexpected bytes" in message
    assert "250 injected plaintext" in message


def test_postgres_bytes_after_s_are_rejected(spec_chain: Chain) -> None:
    """Bytes after PostgreSQL's 'S' are refused (CVE-2021-23222)."""
    with servers.serving(servers.scripted_server(b"", [b"S\x16\x03\x01"])) as server:
        assert "unexpected bytes" in _refused(f"postgres://{server.endpoint}")


def _timed_out(server: TcpServer, starttls: str) -> tuple[ProbeResult, float]:
    started = time.monotonic()
    result = probe(parse_target(server.endpoint, starttls=starttls), ProbeSettings(timeout=1))
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("make", "starttls"),
    [
        (servers.stalling_server, "smtp"),
        (servers.trickling_server, "smtp"),
        (silent_server, "postgres"),
        (silent_server, "xmpp"),
        (silent_server, "mssql"),
    ],
)
def test_stalled_dialogue_ends_at_deadline(make: object, starttls: str) -> None:
    """A server that greets then stalls, trickles, or never answers ends at the 1 s deadline."""
    assert callable(make)
    with servers.serving(make()) as server:
        result, elapsed = _timed_out(server, starttls)
    assert result.error is not None
    assert result.error.kind is ErrorKind.TIMEOUT, result.error
    assert 0.9 <= elapsed < 2.0
    assert 900 <= result.elapsed_ms < 2000


def test_tls12_server_after_dialogue(tmp_path: Path) -> None:
    """After a dialogue the handshake still reaches a TLS 1.2-only server and gets its chain."""
    chain = make_chain(tmp_path, name="tls12")
    tls = server_context(chain, max_version=ssl.TLSVersion.TLSv1_2)
    replies = [b"250-mx\r\n250 STARTTLS\r\n", b"220 go ahead\r\n"]
    with servers.serving(servers.scripted_server(b"220 mx\r\n", replies, tls=tls)) as server:
        result = probe(parse_target(f"smtp://{server.endpoint}"), FAST)
    assert result.chain == chain.ders
    assert result.tls_version == "TLSv1.2"


def test_cli_starttls_option_and_scheme_print_the_same_chain(
    smtp_server: servers.Running, capsys: pytest.CaptureFixture[str]
) -> None:
    """``probe --starttls smtp HOST:PORT`` and ``probe smtp://HOST:PORT`` print the same chain
    as PEM; without the option the plaintext greeting is reported as not TLS."""
    assert smtp_server.chain is not None
    port = smtp_server.ports["smtp"]
    expected = "".join(to_pem(der) for der in smtp_server.chain.ders)
    code, by_option, _ = run_cli(
        ["probe", "--pem", "--starttls", "smtp", f"127.0.0.1:{port}"], capsys
    )
    assert code == 0
    assert by_option == expected
    code, by_scheme, _ = run_cli(["probe", "--pem", f"smtp://127.0.0.1:{port}"], capsys)
    assert code == 0
    assert by_scheme == expected
    code, out, _ = run_cli(["probe", "--json", f"127.0.0.1:{port}"], capsys)
    assert code == 2
    assert json.loads(out)[0]["error"]["kind"] == "not_tls"
