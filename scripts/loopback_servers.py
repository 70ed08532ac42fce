"""Loopback TLS servers for the benchmark scripts: ``openssl s_server`` processes on 127.0.0.1.

C servers keep the server side out of a Python measurement. Loopback only.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_listening(port: int) -> None:
    """Block until something accepts on the port."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on {port} did not start")


def start_openssl_servers(
    cert_file: Path, key_file: Path, count: int
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """Start ``count`` servers presenting the chain; return the processes and their ports."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    for _ in range(count):
        port = free_port()
        command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-quiet"]
        command += ["-cert", str(cert_file), "-key", str(key_file)]
        procs.append(
            subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        ports.append(port)
    for port in ports:
        wait_listening(port)
    return procs, ports
