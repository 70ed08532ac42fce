"""Each probe stage reports its own failure: resolve, connect, STARTTLS dialogue, handshake.

Every server is a real listener on loopback; only the resolver and the clock are injected,
where the probe takes them as arguments.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import tls_servers
from tests.listeners import closed_port
from tests.tls_servers import TcpServer, running
from trackssl_agent.engine.probe import ProbeSettings, connect, probe
from trackssl_agent.engine.results import ErrorKind, ProbeError, ProbeResult
from trackssl_agent.engine.starttls_binary import prelogin_options, tds_packets
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.engine.transport import Deadline

SHORT = ProbeSettings(timeout=1.0)


def _failed(result: ProbeResult, kind: ErrorKind) -> str:
    """The message of ``result``'s error, after checking it is of ``kind``."""
    assert result.error is not None, "the probe should have failed"
    assert result.error.kind is kind, result.error
    return result.error.message


def _reset(conn: socket.socket) -> None:
    """Close with an RST rather than a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


# --- resolve --------------------------------------------------------------------------------


def test_unresolvable_name_is_dns_naming_the_host() -> None:
    """An NXDOMAIN answer from the (injected) resolver is `dns` and says it cannot resolve."""

    def nxdomain(*args: object) -> list[tuple[object, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = probe(parse_target("nowhere.invalid:443"), SHORT, getaddrinfo=nxdomain)
    message = _failed(result, ErrorKind.DNS)
    assert message == (
        "cannot resolve nowhere.invalid: Name or service not known; check the name and DNS"
    )
    assert result.address is None


def test_deadline_gone_before_the_lookup_is_a_timeout_of_the_dns_lookup() -> None:
    """A deadline that has passed when the lookup would start is `timeout` during the lookup,
    and the resolver is never asked."""
    calls: list[object] = []
    ticks = iter(range(0, 10_000, 100))

    def resolver(*args: object) -> list[tuple[object, ...]]:
        calls.append(args)
        return []

    def clock() -> float:
        return float(next(ticks))  # every reading is 100 s after the one before

    result = probe(parse_target("slow.test:443"), SHORT, clock=clock, getaddrinfo=resolver)
    message = _failed(result, ErrorKind.TIMEOUT)
    assert "during the DNS lookup" in message
    assert calls == []


def test_ip_literal_of_the_excluded_family_is_dns_in_words_of_the_option() -> None:
    """An IPv6 literal probed with -4 fails at the resolve stage (`dns`), saying that -4
    was given and what the address is: no lookup failed, so no lookup's words."""
    result = probe(parse_target("[::1]:443"), ProbeSettings(timeout=1, family=socket.AF_INET))
    assert _failed(result, ErrorKind.DNS) == (
        "-4 given but ::1 is an IPv6 address; drop -4 to probe it"
    )


def _ipv4_only(host: str, port: int, family: int, *_rest: object) -> list[tuple[Any, ...]]:
    """A resolver for a name with an A record and no AAAA: glibc's answer for AF_INET6."""
    if family == socket.AF_INET6:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


def test_a_name_without_an_address_of_the_family_asked_for_says_so() -> None:
    """-6 and a name with IPv4 addresses only: `dns`, saying the name has no IPv6 address
    (a second lookup, without -6, tells that from a name that does not exist)."""
    settings = ProbeSettings(timeout=5, family=socket.AF_INET6)
    result = probe(parse_target("v4only.test:443"), settings, getaddrinfo=_ipv4_only)
    assert _failed(result, ErrorKind.DNS) == (
        "-6 given but v4only.test has no IPv6 address, only IPv4; drop -6 to probe it"
    )


# --- connect --------------------------------------------------------------------------------


def test_port_without_listener_is_refused() -> None:
    """Nothing listening is `refused`, naming the endpoint and asking about the service."""
    port = closed_port()
    result = probe(parse_target(f"127.0.0.1:{port}"), SHORT)
    message = _failed(result, ErrorKind.REFUSED)
    assert message == (
        f"127.0.0.1:{port}: connection refused; is the service running on this port?"
    )
    assert result.address is None


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full, so the kernel drops new SYNs: connect hangs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_unanswered_connect_times_out_naming_connect(full_backlog: int) -> None:
    """A SYN that is never answered ends at the deadline as `timeout` during connect."""
    started = time.monotonic()
    result = probe(parse_target(f"127.0.0.1:{full_backlog}"), SHORT)
    elapsed = time.monotonic() - started
    message = _failed(result, ErrorKind.TIMEOUT)
    assert message == f"127.0.0.1:{full_backlog}: no answer during connect before the deadline"
    assert 0.9 <= elapsed < 2.0
    assert result.address is None


def test_connect_stage_returns_its_error_rather_than_raising() -> None:
    """The connect stage on its own hands back a `refused` ProbeError for a closed port."""
    port = closed_port()
    target = parse_target(f"127.0.0.1:{port}")
    addresses = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    outcome = connect(target, addresses, Deadline(1))
    assert isinstance(outcome, ProbeError)
    assert outcome.kind is ErrorKind.REFUSED


# --- STARTTLS dialogue ----------------------------------------------------------------------


def test_silent_dialogue_times_out_naming_the_dialogue() -> None:
    """A PostgreSQL port that never answers the SSLRequest is `timeout` during its dialogue."""
    with running(tls_servers.silent_server()) as server:
        result = probe(parse_target(f"postgres://{server.endpoint}"), SHORT)
    message = _failed(result, ErrorKind.TIMEOUT)
    assert message == (
        f"{server.endpoint}: no answer during the postgres STARTTLS dialogue before the deadline"
    )
    assert result.address == "127.0.0.1"


def test_server_closing_during_the_dialogue_is_starttls() -> None:
    """An SMTP server that greets, then closes on EHLO, is `starttls`: it closed the session."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(b"220 mail.test ESMTP\r\n")
        conn.recv(4096)
        conn.close()

    with running(TcpServer(handle)) as server:
        result = probe(parse_target(f"smtp://{server.endpoint}"), SHORT)
    message = _failed(result, ErrorKind.STARTTLS)
    assert message == f"{server.endpoint}: the server closed the connection"


def test_server_resetting_during_the_dialogue_is_reset_naming_the_dialogue() -> None:
    """An SMTP server that resets the connection on EHLO is `reset` during the dialogue."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(b"220 mail.test ESMTP\r\n")
        conn.recv(4096)
        _reset(conn)

    with running(TcpServer(handle)) as server:
        result = probe(parse_target(f"smtp://{server.endpoint}"), SHORT)
    message = _failed(result, ErrorKind.RESET)
    assert message == (
        f"{server.endpoint}: the server reset the connection during the smtp STARTTLS dialogue"
    )


# --- TLS handshake --------------------------------------------------------------------------


def test_plaintext_answer_to_the_handshake_is_not_tls() -> None:
    """A server answering the ClientHello in plaintext is `not_tls`, quoting it."""
    with running(tls_servers.http_server()) as server:
        result = probe(parse_target(server.endpoint), SHORT)
    message = _failed(result, ErrorKind.NOT_TLS)
    assert message.startswith("the server answered the TLS ClientHello in plaintext")
    assert "HTTP/1.1 400 Bad Request" in message
    assert result.address == "127.0.0.1"


def test_silent_handshake_times_out_naming_the_handshake() -> None:
    """A direct-TLS port that never answers the ClientHello is `timeout` during the handshake."""
    with running(tls_servers.silent_server()) as server:
        result = probe(parse_target(server.endpoint), SHORT)
    message = _failed(result, ErrorKind.TIMEOUT)
    assert message == f"{server.endpoint}: no answer during the TLS handshake before the deadline"


def test_reset_during_the_handshake_names_the_handshake() -> None:
    """An RST in answer to the ClientHello is `reset` during the handshake."""
    with running(tls_servers.reset_server()) as server:
        result = probe(parse_target(server.endpoint), SHORT)
    message = _failed(result, ErrorKind.RESET)
    assert message == f"{server.endpoint}: the server reset the connection during the TLS handshake"


def test_close_after_client_hello_is_handshake_saying_it_closed() -> None:
    """A FIN in answer to the ClientHello is `handshake`: closed during the TLS handshake."""

    def handle(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.close()

    with running(TcpServer(handle)) as server:
        result = probe(parse_target(server.endpoint), SHORT)
    message = _failed(result, ErrorKind.HANDSHAKE)
    assert message == (
        f"{server.endpoint}: the server closed the connection during the TLS handshake; "
        "it may not speak TLS on this port, or it needs STARTTLS"
    )


def test_alert_in_answer_to_the_handshake_is_handshake_with_the_reason() -> None:
    """A handshake_failure alert is `handshake`, with OpenSSL's reason in words."""

    def handle(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]))  # fatal handshake_failure
        time.sleep(0.5)

    with running(TcpServer(handle)) as server:
        result = probe(parse_target(server.endpoint), SHORT)
    message = _failed(result, ErrorKind.HANDSHAKE)
    assert message == f"{server.endpoint}: TLS handshake failed: sslv3 alert handshake failure"


def test_close_after_the_dialogue_is_a_handshake_failure() -> None:
    """An SMTP server that agrees to STARTTLS and then closes fails in the handshake stage."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(b"220 mail.test ESMTP\r\n")
        conn.recv(4096)
        conn.sendall(b"250 STARTTLS\r\n")
        conn.recv(4096)
        conn.sendall(b"220 go ahead\r\n")
        conn.recv(4096)
        conn.close()

    with running(TcpServer(handle)) as server:
        result = probe(parse_target(f"smtp://{server.endpoint}"), SHORT)
    message = _failed(result, ErrorKind.HANDSHAKE)
    assert "closed the connection during the TLS handshake" in message


# --- the one deadline across every stage ----------------------------------------------------


def test_one_deadline_spans_dns_connect_dialogue_and_handshake(full_backlog: int) -> None:
    """DNS, connect, the STARTTLS dialogue and the handshake all draw on the one deadline
    made when the probe starts: a slow lookup, a dead first address, a slow dialogue and
    then a stalled handshake end at that deadline, not at a deadline started anew later.

    The lookup and the dialogue are slow on the probe's injected clock (the resolver and
    the server move it forward), so the bound holds however slow the machine; connect to
    the dead address really waits, for its share of what is left."""
    timeout, lookup, dialogue = 2.0, 0.8, 0.3
    skew = [0.0]

    def clock() -> float:
        return time.monotonic() + skew[0]

    def handle(conn: socket.socket) -> None:
        conn.sendall(b"220 mx.test ESMTP\r\n")
        conn.recv(4096)  # EHLO
        skew[0] += dialogue  # before the reply: the client reads it after the clock moved
        conn.sendall(b"250 STARTTLS\r\n")
        conn.recv(4096)  # STARTTLS
        conn.sendall(b"220 go ahead\r\n")
        conn.recv(4096)  # the ClientHello, never answered
        conn.recv(4096)  # held open until the server closes

    with running(TcpServer(handle)) as server:

        def resolver(*_args: object) -> list[tuple[Any, ...]]:
            skew[0] += lookup
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", full_backlog)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port)),
            ]

        result = probe(
            parse_target(f"smtp://mx.test:{server.port}"), ProbeSettings(timeout=timeout),
            clock=clock, getaddrinfo=resolver,
        )  # fmt: skip
    message = _failed(result, ErrorKind.TIMEOUT)
    assert (
        message == f"mx.test:{server.port}: no answer during the TLS handshake before the deadline"
    )
    assert result.address == "127.0.0.1"
    # A deadline re-armed after any stage would end at least 0.8 s (the lookup) later.
    assert timeout * 0.9 <= result.elapsed_ms / 1000 < timeout * 1.25


def _ends_at_the_first_deadline(
    handle: Callable[[socket.socket], None], scheme: str, during: str
) -> None:
    """Probe ``scheme://slow.test`` served by ``handle`` after a lookup that moved the
    probe's clock 1.2 s of its 2 s deadline forward: it must time out ``during`` that stage at
    the deadline made when the probe started (a deadline re-armed after the lookup, the
    connection or the dialogue would end at least 1.2 s later)."""
    timeout = 2.0
    skew = [0.0]

    def resolver(*_args: object) -> list[tuple[Any, ...]]:
        skew[0] += 0.6 * timeout
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port))]

    with running(TcpServer(handle)) as server:
        result = probe(
            parse_target(f"{scheme}://slow.test:{server.port}"), ProbeSettings(timeout=timeout),
            clock=lambda: time.monotonic() + skew[0], getaddrinfo=resolver,
        )  # fmt: skip
    message = _failed(result, ErrorKind.TIMEOUT)
    assert message == f"slow.test:{server.port}: no answer during {during} before the deadline"
    assert timeout * 0.9 <= result.elapsed_ms / 1000 < timeout * 1.25


def test_one_deadline_spans_a_slow_lookup_and_a_stalled_dialogue() -> None:
    """A lookup that took most of the deadline, then an SMTP server that greets and never
    answers EHLO: the dialogue ends at the deadline made when the probe started, not at one
    started after the connection (the dialogue's own, which the handshake does not use)."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(b"220 mx.test ESMTP\r\n")
        conn.recv(4096)  # EHLO, never answered
        conn.recv(4096)  # held open until the client leaves

    _ends_at_the_first_deadline(handle, "smtp", "the smtp STARTTLS dialogue")


def test_one_deadline_spans_the_tds_dialogue_and_the_handshake_inside_it() -> None:
    """SQL Server's handshake travels inside TDS packets, through the memory-BIO reader: after
    a lookup that took most of the deadline and a pre-login that agrees to encrypt, a server
    that never answers the ClientHello ends at the deadline made when the probe started."""

    def handle(conn: socket.socket) -> None:
        header = conn.recv(8, socket.MSG_WAITALL)  # PRELOGIN
        conn.recv(struct.unpack("!H", header[2:4])[0] - 8, socket.MSG_WAITALL)
        options = prelogin_options([(0x00, bytes([16, 0, 3, 0xE8, 0, 0])), (0x01, b"\x01")])
        conn.sendall(tds_packets(0x04, options))  # ENCRYPT_ON
        conn.recv(4096)  # the ClientHello inside PRELOGIN packets, never answered
        conn.recv(4096)

    _ends_at_the_first_deadline(handle, "mssql", "the TLS handshake")


def test_a_bug_in_a_stage_still_gives_the_target_a_result() -> None:
    """An exception no stage expects (a bug) ends as that target's error result, naming
    the exception, instead of killing the worker and dropping the target."""

    def broken_resolver(*_args: object, **_kwargs: object) -> list[Any]:
        raise RuntimeError("resolver bug")

    result = probe(
        parse_target("resolver-bug.test:9"),  # the injected resolver answers; no DNS
        ProbeSettings(timeout=2.0),
        getaddrinfo=broken_resolver,
    )
    assert result.error is not None
    assert result.error.kind is ErrorKind.HANDSHAKE
    assert "unexpected RuntimeError" in result.error.message
    assert "resolver bug" in result.error.message
