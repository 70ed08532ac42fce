"""The probe engine against real TLS and misbehaving servers on loopback."""

from __future__ import annotations

import dataclasses
import inspect
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import tls_servers
from tests.certs import Chain, make_chain, self_signed
from tests.listeners import closed_port
from trackssl_agent.engine.certificates import summarize
from trackssl_agent.engine.probe import ProbeSettings, client_context, probe
from trackssl_agent.engine.probe_pool import probe_many, start_probes
from trackssl_agent.engine.results import ErrorKind, ProbeError
from trackssl_agent.engine.targets import parse_target

FAST = ProbeSettings(timeout=5)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for this module's certificates."""
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def rsa_chain(certs: Path) -> Chain:
    """An RSA leaf signed by an intermediate."""
    return make_chain(certs, kind="rsa", name="rsa")


@pytest.fixture(scope="module")
def rsa_server(rsa_chain: Chain) -> Iterator[tls_servers.TcpServer]:
    """A TLS server presenting the RSA chain."""
    with tls_servers.running(tls_servers.tls_server(tls_servers.server_context(rsa_chain))) as s:
        yield s


def test_rsa_chain_with_intermediate(rsa_chain: Chain, rsa_server: tls_servers.TcpServer) -> None:
    """The whole presented chain comes back, leaf first, with version and cipher."""
    result = probe(parse_target(rsa_server.endpoint), FAST)
    assert result.ok, result.error
    assert result.chain == rsa_chain.ders
    assert result.tls_version == "TLSv1.3"
    assert result.cipher
    assert result.address == "127.0.0.1"
    assert result.servername is None  # IP literal: no SNI


def test_ecdsa_chain_with_intermediate(certs: Path) -> None:
    """ECDSA chains are captured the same way, and the key is described as EC P-256."""
    chain = make_chain(certs, kind="ec", name="ec")
    with tls_servers.running(tls_servers.tls_server(tls_servers.server_context(chain))) as server:
        result = probe(parse_target(server.endpoint), FAST)
    assert result.chain == chain.ders
    assert summarize(result.chain[0]).key == "EC P-256"


def test_self_signed_and_expired(certs: Path) -> None:
    """A self-signed, expired certificate is still retrieved; the summary says so."""
    past = datetime.now(UTC) - timedelta(days=3)
    chain = self_signed(certs, name="expired", not_before=past - timedelta(days=30), not_after=past)
    with tls_servers.running(tls_servers.tls_server(tls_servers.server_context(chain))) as server:
        result = probe(parse_target(server.endpoint), FAST)
    assert result.ok
    summary = summarize(result.chain[0])
    assert summary.self_signed is True
    days = summary.days_remaining(datetime.now(UTC))
    assert days is not None
    assert days < 0


def test_sni_name_selects_certificate(certs: Path) -> None:
    """The host name goes out as SNI; --servername overrides it; an IP literal sends none."""
    default = make_chain(certs, cn="default.test", name="sni-default", intermediate=False)
    alpha = make_chain(certs, cn="alpha.test", name="sni-alpha", intermediate=False)
    contexts = {"alpha.test": tls_servers.server_context(alpha)}
    server = tls_servers.sni_server(contexts, tls_servers.server_context(default))
    with tls_servers.running(server):
        by_ip = probe(parse_target(server.endpoint), FAST)
        by_name = probe(parse_target(f"localhost:{server.port}"), FAST)
        forced = probe(
            parse_target(server.endpoint), ProbeSettings(timeout=5, servername="alpha.test")
        )
    assert by_ip.chain == default.ders
    assert by_name.servername == "localhost"
    assert by_name.chain == default.ders
    assert forced.servername == "alpha.test"
    assert forced.chain == alpha.ders


def test_ipv6_loopback(rsa_chain: Chain) -> None:
    """A server on ::1 is reached through a bracketed literal, and -6 keeps it."""
    context = tls_servers.server_context(rsa_chain)
    with tls_servers.running(tls_servers.tls_server(context, host="::1")) as server:
        result = probe(parse_target(f"[::1]:{server.port}"), FAST)
        only_v4 = probe(
            parse_target(f"[::1]:{server.port}"), ProbeSettings(timeout=5, family=socket.AF_INET)
        )
    assert result.ok
    assert result.address == "::1"
    assert result.chain == rsa_chain.ders
    assert not only_v4.ok
    assert only_v4.error is not None
    assert only_v4.error.kind == ErrorKind.DNS


@pytest.mark.parametrize(("flag", "version"), [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")])
def test_legacy_tls10_tls11_sha1_rsa1024(certs: Path, flag: str, version: str) -> None:
    """TLS 1.0 and 1.1-only servers (openssl s_server) with RSA-1024/SHA-1 certificates are read."""
    chain = self_signed(certs, name=f"legacy{flag}", bits=1024, hash_name="sha1")
    server = tls_servers.OpensslServer(chain, flag, "-cipher", "ALL:@SECLEVEL=0")
    try:
        result = probe(parse_target(f"127.0.0.1:{server.port}"), FAST)
    finally:
        server.close()
    assert result.ok, result.error
    assert result.tls_version == version
    assert result.chain == chain.ders
    summary = summarize(result.chain[0])
    assert summary.key == "RSA 1024"
    assert summary.signature_algorithm == "sha1WithRSAEncryption"


def test_client_context_accepts_legacy_servers() -> None:
    """The shared context allows unsafe legacy renegotiation servers and every version."""
    context = client_context()
    assert context.options & 0x4  # OP_LEGACY_SERVER_CONNECT: servers without RFC 5746
    assert context.minimum_version == ssl.TLSVersion.MINIMUM_SUPPORTED
    assert context.verify_mode == ssl.CERT_NONE
    assert context is client_context()  # built once


def test_client_certificate_demanded_tls12(rsa_chain: Chain, certs: Path) -> None:
    """A TLS 1.2 server that demands a client certificate still yields its chain, with a warning."""
    context = tls_servers.server_context(
        rsa_chain, max_version=ssl.TLSVersion.TLSv1_2, client_ca=rsa_chain.ca_file
    )
    with tls_servers.running(tls_servers.tls_server(context)) as server:
        result = probe(parse_target(server.endpoint), FAST)
    assert result.ok
    assert result.chain == rsa_chain.ders
    assert result.warnings
    assert "broke off" in result.warnings[0]


def test_client_certificate_demanded_tls13(rsa_chain: Chain) -> None:
    """Under TLS 1.3 the demand arrives after our side finished: the chain is taken cleanly."""
    context = tls_servers.server_context(rsa_chain, client_ca=rsa_chain.ca_file)
    with tls_servers.running(tls_servers.tls_server(context)) as server:
        result = probe(parse_target(server.endpoint), FAST)
    assert result.ok
    assert result.chain == rsa_chain.ders


def test_closed_port() -> None:
    """Nothing listening is `refused`."""
    port = closed_port()
    result = probe(parse_target(f"127.0.0.1:{port}"), FAST)
    assert result.error is not None
    assert result.error.kind == ErrorKind.REFUSED
    assert f"127.0.0.1:{port}" in result.error.message


def test_silent_listener_times_out_at_deadline() -> None:
    """A listener that never answers ends at the deadline as `timeout`."""
    with tls_servers.running(tls_servers.silent_server()) as server:
        started = time.monotonic()
        result = probe(parse_target(server.endpoint), ProbeSettings(timeout=1.0))
        elapsed = time.monotonic() - started
    assert result.error is not None
    assert result.error.kind == ErrorKind.TIMEOUT
    assert 0.9 <= elapsed < 2.0


def test_trickling_server_is_cut_off_at_deadline() -> None:
    """A server sending one byte at a time cannot stretch the single deadline."""
    with tls_servers.running(tls_servers.trickle_server(interval=0.1)) as server:
        started = time.monotonic()
        result = probe(parse_target(server.endpoint), ProbeSettings(timeout=1.0))
        elapsed = time.monotonic() - started
    assert result.error is not None
    assert result.error.kind == ErrorKind.TIMEOUT
    assert elapsed < 2.0


def test_reset_after_client_hello() -> None:
    """An RST in answer to the ClientHello is `reset`."""
    with tls_servers.running(tls_servers.reset_server()) as server:
        result = probe(parse_target(server.endpoint), FAST)
    assert result.error is not None
    assert result.error.kind == ErrorKind.RESET


def test_plain_http_server_is_not_tls() -> None:
    """An HTTP answer to a ClientHello is `not_tls`, quoting what the server said."""
    with tls_servers.running(tls_servers.http_server()) as server:
        result = probe(parse_target(server.endpoint), FAST)
    assert result.error is not None
    assert result.error.kind == ErrorKind.NOT_TLS
    assert "HTTP/1.1 400" in result.error.message


def test_unresolvable_name_is_dns() -> None:
    """A name that does not resolve is `dns`, naming the host.

    The resolver answers NXDOMAIN in-process: a real lookup would query the machine's DNS
    server, which is not on loopback.
    """

    def nxdomain(*args: object) -> list[tuple[object, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = probe(parse_target("no-such-host.invalid:443"), FAST, getaddrinfo=nxdomain)
    assert result.error is not None
    assert result.error.kind == ErrorKind.DNS
    assert "no-such-host.invalid" in result.error.message


def _recorded_probe(chain: Chain) -> bytes:
    """What a probe of a TLS 1.2 server presenting ``chain`` sent, through a recording
    proxy, once the client closed; the probe must have succeeded."""
    context = tls_servers.server_context(chain, max_version=ssl.TLSVersion.TLSv1_2)
    with tls_servers.running(tls_servers.tls_server(context)) as backend:
        proxy = tls_servers.RecordingProxy(backend.port)
        try:
            result = probe(parse_target(f"127.0.0.1:{proxy.port}"), FAST)
            assert proxy.client_closed.wait(5)
        finally:
            proxy.close()
    assert result.ok
    return bytes(proxy.received)


def test_sends_only_handshake_and_closes(rsa_chain: Chain) -> None:
    """The server sees a ClientHello first, no application data, and the client closes."""
    sent = _recorded_probe(rsa_chain)
    assert sent[0] == 0x16
    assert b"GET " not in sent
    assert set(tls_servers.record_types(sent)) <= {0x14, 0x15, 0x16}  # no 0x17 app data


def test_denied_target_is_never_contacted(rsa_server: tls_servers.TcpServer) -> None:
    """An allow rule that rejects the address yields `denied` and no connection."""
    before = rsa_server.accepted_before_now()  # the server is shared with other tests
    settings = ProbeSettings(timeout=5, allow=lambda target, address: False)
    result = probe(parse_target(rsa_server.endpoint), settings)
    assert result.error is not None
    assert result.error.kind == ErrorKind.DENIED
    assert rsa_server.accepted_before_now() == before


def _client_hello_extensions(stream: bytes) -> list[int]:
    """The extension types of the ClientHello opening ``stream`` (RFC 5246 7.4.1.2)."""
    hello = stream[5 + 4 :]  # record header, handshake header
    at = 2 + 32  # client_version, random
    at += 1 + hello[at]  # session_id
    at += 2 + int.from_bytes(hello[at : at + 2], "big")  # cipher_suites
    at += 1 + hello[at]  # compression_methods
    end = at + 2 + int.from_bytes(hello[at : at + 2], "big")
    at += 2
    types = []
    while at + 4 <= end:
        types.append(int.from_bytes(hello[at : at + 2], "big"))
        at += 4 + int.from_bytes(hello[at + 2 : at + 4], "big")
    return types


def test_the_client_hello_asks_for_no_session_ticket(rsa_chain: Chain) -> None:
    """A probe never resumes a session, so its ClientHello carries no session_ticket
    extension (35) and a TLS 1.2 server mints and encrypts no ticket for it."""
    extensions = _client_hello_extensions(_recorded_probe(rsa_chain))
    assert 0x000D in extensions  # signature_algorithms: the parse found the extensions
    assert 0x0023 not in extensions


def test_probe_many_yields_every_target_with_index(
    rsa_chain: Chain, rsa_server: tls_servers.TcpServer
) -> None:
    """probe_many returns one result per target, tagged with its input index."""
    targets = [parse_target(rsa_server.endpoint) for _ in range(20)]
    targets.insert(7, parse_target(f"127.0.0.1:{closed_port()}"))
    seen = dict(probe_many(targets, FAST, concurrency=4))
    assert sorted(seen) == list(range(21))
    assert not seen[7].ok
    assert all(seen[i].chain == rsa_chain.ders for i in seen if i != 7)


def test_probe_many_stop_prevents_new_probes(rsa_server: tls_servers.TcpServer) -> None:
    """Once stop is set, no further target is started."""
    stop = threading.Event()
    stop.set()
    targets = [parse_target(rsa_server.endpoint) for _ in range(10)]
    assert list(probe_many(targets, FAST, concurrency=2, stop=stop)) == []


def test_workers_hold_results_back_while_too_many_wait_unread(
    rsa_server: tls_servers.TcpServer,
) -> None:
    """With ``waiting`` results unread, each worker holds its next result back, so no more
    targets are probed than the workers plus the waiting room; reading lets them go on."""
    targets = [parse_target(rsa_server.endpoint) for _ in range(30)]
    before = rsa_server.accepted_before_now()  # the server is shared with other tests
    listed = len(rsa_server.connections)  # the marker connection included
    probes = start_probes(targets, FAST, concurrency=2, waiting=3)
    try:
        # Nobody reads. Once the room and both workers' hands are full the workers are
        # free to probe on (a probe here takes milliseconds), and must not.
        deadline = time.monotonic() + 20
        while len(rsa_server.connections) - listed < 3 + 2:
            assert time.monotonic() < deadline, "the workers never filled the waiting room"
            time.sleep(0.01)
        time.sleep(1)
        assert rsa_server.accepted_before_now() - before == 3 + 2
        seen = 0
        while probes.get(timeout=10) is not None:
            seen += 1
        assert seen == 30
    finally:
        probes.halt()


def test_many_targets_run_concurrently() -> None:
    """Twenty silent targets with a 1 s deadline finish together, not one after another."""
    with tls_servers.running(tls_servers.silent_server()) as server:
        targets = [parse_target(server.endpoint) for _ in range(20)]
        started = time.monotonic()
        results = list(probe_many(targets, ProbeSettings(timeout=1.0), concurrency=20))
        elapsed = time.monotonic() - started
    assert len(results) == 20
    assert elapsed < 3.0


def test_every_address_is_tried_until_one_connects(rsa_server: tls_servers.TcpServer) -> None:
    """A refused first address does not end the probe: the next address is tried."""
    from trackssl_agent.engine.probe import _connect  # noqa: PLC0415 - the unit under test is private
    from trackssl_agent.engine.transport import Deadline  # noqa: PLC0415

    closed = closed_port()
    addresses = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", rsa_server.port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", rsa_server.port)),
    ]
    sock, address = _connect(addresses, Deadline(5))
    sock.close()
    assert address == "127.0.0.1"
    assert sock.family == socket.AF_INET


def test_hung_dns_lookup_is_abandoned_at_the_deadline() -> None:
    """getaddrinfo ignores socket timeouts; a lookup that hangs still ends at the deadline."""
    from trackssl_agent.engine.probe import resolve  # noqa: PLC0415 - one stage of the probe
    from trackssl_agent.engine.transport import Deadline  # noqa: PLC0415

    release = threading.Event()

    def hanging_lookup(*args: object) -> list[tuple[object, ...]]:
        release.wait(30)
        return []

    started = time.monotonic()
    error = resolve(parse_target("slow.example:443"), 0, Deadline(0.5), hanging_lookup)
    release.set()
    assert time.monotonic() - started < 1.0
    assert isinstance(error, ProbeError)
    assert error.kind == ErrorKind.DNS
    assert "did not answer within" in error.message


def test_server_without_secure_renegotiation(rsa_chain: Chain) -> None:
    """A TLS 1.2 server that omits RFC 5746 renegotiation info (gnutls-serv) is read, while
    a default OpenSSL 3 client refuses it."""
    server = tls_servers.GnutlsServer(rsa_chain, "NORMAL:-VERS-TLS1.3:%DISABLE_SAFE_RENEGOTIATION")
    try:
        strict = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        strict.check_hostname = False
        strict.verify_mode = ssl.CERT_NONE
        with (
            pytest.raises(ssl.SSLError, match="UNSAFE_LEGACY_RENEGOTIATION"),
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
        ):
            strict.wrap_socket(sock)
        result = probe(parse_target(f"127.0.0.1:{server.port}"), FAST)
    finally:
        server.close()
    assert result.ok, result.error
    assert result.tls_version == "TLSv1.2"
    assert result.chain == rsa_chain.ders


def test_the_engine_takes_its_timeout_and_concurrency_from_the_caller() -> None:
    """The engine has no default of its own for the settings table's timeout and concurrency:
    probe_many and start_probes need a concurrency and ProbeSettings a timeout, so the table
    stays their one source (the engine imports no settings)."""
    for function in (probe_many, start_probes):
        assert (
            inspect.signature(function).parameters["concurrency"].default is inspect.Parameter.empty
        )
    timeout = next(f for f in dataclasses.fields(ProbeSettings) if f.name == "timeout")
    assert timeout.default is dataclasses.MISSING
    assert timeout.default_factory is dataclasses.MISSING
