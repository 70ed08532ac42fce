"""The ports the tests hold (``tests.listeners``): a closed port stays closed, and a server
process is used only on ports it alone listens on, so a second run of the suite or a
packaged daemon on the same machine is never taken for the test's own server."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import listeners, protocol_servers
from tests.listeners import PortTaken, closed_port, own_listeners

# A listener with SO_REUSEPORT (so two of them can share a port, as some daemons allow):
# prints its port, then waits until killed.
LISTEN = """
import socket, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(8)
print(sock.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.fixture
def foreign() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A listener in a session of its own: someone else's server, as far as a test knows."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTEN, "0"], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield proc, port
    proc.kill()
    proc.wait()


def test_closed_port_refuses_and_nobody_can_listen_there() -> None:
    """A closed port refuses connections on 127.0.0.1 and ::1, and another process cannot
    listen on it, on one loopback address or all of them."""
    port = closed_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("::1", port), timeout=5)
    for host in ("127.0.0.1", "127.0.0.5", "0.0.0.0"):  # noqa: S104 - bound, never listening
        done = subprocess.run(
            [sys.executable, "-c", LISTEN.replace('"127.0.0.1"', repr(host)), str(port)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode != 0
        assert f"[Errno {errno.EADDRINUSE}]" in done.stderr, done.stderr


def test_a_listener_of_another_session_is_not_ours(
    foreign: tuple[subprocess.Popen[str], int],
) -> None:
    """own_listeners names a port another process listens on, and waits on a port that
    nobody listens on yet."""
    proc, port = foreign
    with pytest.raises(PortTaken, match=str(port)):
        own_listeners(0, [port])
    assert own_listeners(proc.pid, [port])
    assert not own_listeners(proc.pid, [closed_port()])


def test_a_server_is_started_again_when_someone_else_shares_its_port(
    foreign: tuple[subprocess.Popen[str], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server handed a port that another process listens on (both with SO_REUSEPORT, so
    both listen) is stopped and started on another port; the other process is left alone."""
    proc, taken = foreign
    picks = iter([[taken]])
    monkeypatch.setattr(
        protocol_servers, "unused_ports", lambda count: next(picks, listeners.unused_ports(count))
    )
    command = [sys.executable, "-c", LISTEN]
    with protocol_servers.process(
        lambda ports: [*command, str(ports[0])], count=1, log=tmp_path / "server.log"
    ) as ports:
        assert ports != [taken]
    assert next(picks, None) is None  # the taken port was tried first
    assert proc.poll() is None
