"""Loopback ports a test chooses and holds, and proof that a server listening on a port is
the one the test started.

A port found free and handed to a server process can be taken by someone else (a packaged
daemon, a second run of the suite) before the server binds it; a connection to the port
then reaches their listener, not ours. So a test that starts a server process reads from
/proc (Linux) which processes listen on its ports, and uses them only when every listener
is in the session of the process it started; a port held by anyone else means new ports
and a new start. Closed ports (nothing listening) are held by a bound socket that never
listens, so nobody can listen there while the test relies on the refusal.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_held: list[socket.socket] = []


class PortTaken(Exception):
    """A port the test picked is listened on by a process it did not start."""


def closed_port() -> int:
    """A port that refuses connections on every loopback address, IPv4 and IPv6, for the
    rest of the test session: bound by this process on the wildcard address without a
    listen, so no other process can listen on it there or on any one address meanwhile.
    Nothing is reachable through it: a socket that does not listen accepts nothing."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 as well
        sock.bind(("::", 0))
    except OSError:  # no IPv6 here
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - bound, never listening
    _held.append(sock)
    port: int = sock.getsockname()[1]
    return port


def closed_ports(count: int) -> str:
    """``count`` ``closed_port``s as a ``--ports`` list."""
    return ",".join(str(closed_port()) for _ in range(count))


def unused_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nothing is bound to right now, for a server process to bind.

    Free only at this instant: the caller proves the listener is its own (``own_listeners``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((host, 0))  # all bound at once: distinct
            ports.append(sock.getsockname()[1])
    return ports


def _listening_inodes(port: int) -> set[int]:
    """The socket inodes listening on ``port`` (any address, IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(fields[9]))
    return inodes


def _session(pid: int) -> int | None:
    """The session id of ``pid``, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses.
    return int(stat.rpartition(")")[2].split()[3])


def _socket_owners(inodes: set[int]) -> dict[int, set[int]]:
    """For each inode, the pids holding it open (those whose fds this process may read)."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[int, set[int]] = {inode: set() for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(entry / "fd"):
                with contextlib.suppress(OSError):
                    inode = wanted.get(str(Path(fd.path).readlink()))
                    if inode is not None:
                        owners[inode].add(int(entry.name))
    return owners


def own_listeners(session: int, ports: list[int]) -> bool:
    """Whether every port has a listener and every listener on it is held by a process in
    ``session`` (a server started with ``start_new_session``: its pid). False while some
    port has no listener yet; PortTaken when another process listens on one."""
    for port in ports:
        inodes = _listening_inodes(port)
        if not inodes:
            return False
        for inode, pids in _socket_owners(inodes).items():
            if not any(_session(pid) == session for pid in pids):
                raise PortTaken(f"port {port} is listened on by another process (inode {inode})")
    return True
