"""Loopback TLS servers for the benchmark scripts: ``openssl s_server`` processes on 127.0.0.1.

C servers keep the server side out of a Python measurement. Loopback only. Each server is
used only once it alone listens on its port (``tests.listeners``): a port picked free and
taken by someone else before the server bound it means a new start on another port, never
a benchmark against someone else's listener.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.listeners import PortTaken, own_listeners, unused_ports

ATTEMPTS = 5


def _start_one(cert_file: Path, key_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """One server on a port it alone listens on."""
    for _ in range(ATTEMPTS):
        (port,) = unused_ports(1)
        command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-quiet"]
        command += ["-cert", str(cert_file), "-key", str(key_file)]
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if own_listeners(proc.pid, [port]):
                    return proc, port
                time.sleep(0.05)
        except PortTaken:
            pass
        proc.kill()
        proc.wait()
    raise SystemExit(f"openssl s_server did not listen on a port of its own in {ATTEMPTS} starts")


def start_openssl_servers(
    cert_file: Path, key_file: Path, count: int
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """Start ``count`` servers presenting the chain; return the processes and their ports."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    for _ in range(count):
        proc, port = _start_one(cert_file, key_file)
        procs.append(proc)
        ports.append(port)
    return procs, ports
