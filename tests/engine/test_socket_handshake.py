"""The handshake on the socket path (in C): the chain as the memory-BIO path gives it, the
watchdog's flood budget and deadline, and the fall-back to the memory-BIO reader."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import hostile_servers as hostile
from tests import tls_servers
from tests.certs import Chain, make_chain
from trackssl_agent.engine import probe as probe_module
from trackssl_agent.engine import socket_handshake
from trackssl_agent.engine.handshake import MAX_HANDSHAKE
from trackssl_agent.engine.probe import ProbeSettings, client_context, probe
from trackssl_agent.engine.results import ErrorKind
from trackssl_agent.engine.socket_handshake import (
    Fallback,
    Watchdog,
    bytes_received,
    handshake_over_socket,
)
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.engine.transport import Deadline

pytestmark = pytest.mark.skipif(
    not socket_handshake.available(), reason="the socket path runs where TCP_INFO counts bytes"
)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """An ECDSA leaf signed by an intermediate."""
    return make_chain(tmp_path_factory.mktemp("certs"), kind="ec", name="fast")


@pytest.fixture(scope="module")
def server(chain: Chain) -> Iterator[tls_servers.TcpServer]:
    """A TLS server presenting the chain."""
    with tls_servers.running(tls_servers.tls_server(tls_servers.server_context(chain))) as s:
        yield s


def _connected(server: tls_servers.TcpServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=5)


def test_the_probe_takes_the_socket_path_here() -> None:
    """On Linux the kernel counts received bytes, so probes shake hands in C first."""
    assert socket_handshake.available()
    assert probe_module._FAST


def test_chain_version_and_cipher_from_the_socket_path(
    chain: Chain, server: tls_servers.TcpServer
) -> None:
    """The socket path returns the whole chain, leaf first, the version and the cipher."""
    done = handshake_over_socket(_connected(server), Deadline(5), client_context(), None)
    assert done.chain == chain.ders
    assert done.version == "TLSv1.3"
    assert done.cipher
    assert done.warning is None


def test_an_answering_target_is_connected_to_once(server: tls_servers.TcpServer) -> None:
    """A target that answers is probed over one connection: no second look is needed."""
    before = server.accepted_before_now()
    result = probe(parse_target(server.endpoint), ProbeSettings(timeout=5))
    assert result.ok, result.error
    assert server.accepted_before_now() - before == 1


def test_a_plaintext_answer_falls_back_to_the_reader_that_quotes_it() -> None:
    """An HTTP server's answer is gone into OpenSSL on the socket path: the target is
    connected to again and read by the memory-BIO reader, which quotes the answer."""
    with tls_servers.running(tls_servers.http_server()) as http:
        with pytest.raises(Fallback):
            handshake_over_socket(_connected(http), Deadline(5), client_context(), None)
        before = http.accepted_before_now()
        result = probe(parse_target(http.endpoint), ProbeSettings(timeout=5))
        connections = http.accepted_before_now() - before
    assert result.error is not None
    assert result.error.kind is ErrorKind.NOT_TLS
    assert "HTTP/1." in result.error.message
    assert connections == 2


def test_a_reset_before_any_byte_is_settled_without_a_second_connection() -> None:
    """A server that resets after the ClientHello sent nothing the memory-BIO reader could
    read: the socket path's own answer stands (a reset), over one connection."""
    with tls_servers.running(tls_servers.reset_server()) as reset:
        before = reset.accepted_before_now()
        result = probe(parse_target(reset.endpoint), ProbeSettings(timeout=5))
        connections = reset.accepted_before_now() - before
    assert result.error is not None
    assert result.error.kind is ErrorKind.RESET, result.error
    assert connections == 1


def test_the_watchdog_cuts_a_flood_at_the_byte_budget() -> None:
    """Endless HelloRequests, which OpenSSL skips without ever waiting for the network,
    are cut once the kernel counted more than the budget, long before the deadline."""
    budget = 256 * 1024
    watchdog = Watchdog(budget=budget)
    with tls_servers.running(hostile.tls_flood_server("hello-requests")) as flood:
        sock = _connected(flood)
        started = time.monotonic()
        with pytest.raises(Fallback):
            handshake_over_socket(sock, Deadline(10), client_context(), None, watchdog)
        elapsed = time.monotonic() - started
    assert elapsed < 5


def test_the_watchdog_keeps_the_deadline_when_openssl_never_waits() -> None:
    """With no byte budget to stop it, a flood that keeps OpenSSL busy inside one call
    still ends at the deadline (plus the watchdog's tick), as a timeout."""
    watchdog = Watchdog(budget=1 << 60)
    with tls_servers.running(hostile.tls_flood_server("hello-requests")) as flood:
        sock = _connected(flood)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            handshake_over_socket(sock, Deadline(1.0), client_context(), None, watchdog)
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5


def test_a_hello_request_flood_is_named_as_the_memory_bio_path_names_it() -> None:
    """The probe of a flooding server ends as a handshake error saying the server sent more
    than the budget, within the deadline."""
    with tls_servers.running(hostile.tls_flood_server("hello-requests")) as flood:
        result = probe(parse_target(flood.endpoint), ProbeSettings(timeout=3))
    assert result.error is not None
    assert result.error.kind is ErrorKind.HANDSHAKE
    assert f"more than {MAX_HANDSHAKE // 1024} KiB" in result.error.message
    assert result.elapsed_ms < 3000


def test_bytes_received_counts_what_arrived_unread() -> None:
    """The kernel's count includes bytes still waiting in the receive queue."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        peer, _ = listener.accept()
        with client, peer:
            peer.sendall(b"x" * 5000)
            deadline = time.monotonic() + 5
            while bytes_received(client) != 5000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert bytes_received(client) == 5000


def test_the_watchdog_thread_ends_when_idle_and_comes_back(server: tls_servers.TcpServer) -> None:
    """An idle watchdog keeps no thread; the next handshake starts one again."""
    watchdog = Watchdog(tick=0.01)
    handshake_over_socket(_connected(server), Deadline(5), client_context(), None, watchdog)
    assert watchdog._running
    deadline = time.monotonic() + 10
    while watchdog._running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not watchdog._running
    done = handshake_over_socket(_connected(server), Deadline(5), client_context(), None, watchdog)
    assert done.chain
    assert watchdog._running


def test_a_probe_in_a_forked_child_gets_a_watchdog_of_its_own(
    server: tls_servers.TcpServer, tmp_path: Path
) -> None:
    """After fork (``run``'s cycle child) the watchdog starts afresh: a flood in the child is
    still cut, although the parent's watchdog thread does not exist there."""
    import os  # noqa: PLC0415 - only this test forks

    probe(parse_target(server.endpoint), ProbeSettings(timeout=5))  # the parent's thread runs
    with tls_servers.running(hostile.tls_flood_server("hello-requests")) as flood:
        out = tmp_path / "child"
        pid = os.fork()
        if pid == 0:  # the child: probe the flood, write the outcome, leave at once
            try:
                result = probe(parse_target(flood.endpoint), ProbeSettings(timeout=3))
                message = result.error.message if result.error else "ok"
                out.write_text(f"{result.elapsed_ms:.0f} {message}")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    elapsed, message = out.read_text().split(" ", 1)
    assert f"more than {MAX_HANDSHAKE // 1024} KiB" in message
    assert float(elapsed) < 3000


def test_with_no_time_left_to_look_again_what_the_socket_path_saw_stands() -> None:
    """A server that answers a ClientHello with plaintext only after most of the deadline:
    the second look runs out of time, so the probe reports the failed handshake the socket
    path saw, not a timeout."""

    def late_plaintext(conn: socket.socket) -> None:
        conn.recv(4096)
        time.sleep(0.7)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        time.sleep(2)

    with tls_servers.running(tls_servers.TcpServer(late_plaintext)) as server:
        result = probe(parse_target(server.endpoint), ProbeSettings(timeout=1.0))
    assert result.error is not None
    assert result.error.kind is ErrorKind.HANDSHAKE, result.error
    assert "TLS handshake failed" in result.error.message
    assert result.elapsed_ms < 1500
