"""Loopback TLS targets for ``scripts/bench_cycle.py``: an nginx farm and silent listeners.

``NginxFarm`` runs the Debian ``nginx`` binary as its own process (temporary prefix and
configuration, ``daemon off``), one ``server`` block listening with TLS on many
``127.0.0.x:port`` endpoints and presenting a leaf + intermediate chain. A C server keeps the
server side out of the Python being measured, and its worker count is fixed.

``SilentListeners`` are listening sockets held by the calling process and never accepted:
the kernel completes the TCP handshake and then nobody answers the ClientHello, as a server
behind a stalled proxy or a hung service does. Loopback only.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MAX_PORTS_PER_ADDRESS = 4000


@dataclass(frozen=True)
class Endpoint:
    """One loopback TLS endpoint."""

    host: str
    port: int


def endpoints_for(
    count: int, *, base_port: int, per_address: int, first_octet: int
) -> list[Endpoint]:
    """``count`` endpoints: ``per_address`` ports from ``base_port`` on 127.0.0.N, N rising."""
    if per_address > MAX_PORTS_PER_ADDRESS or base_port + per_address > 65535:
        raise SystemExit(f"{per_address} ports from {base_port}: too many per address")
    result: list[Endpoint] = []
    octet = first_octet
    while len(result) < count:
        if octet > 254:
            raise SystemExit(f"{count} endpoints do not fit on 127.0.0.{first_octet}-254")
        take = min(per_address, count - len(result))
        result += [Endpoint(f"127.0.0.{octet}", base_port + n) for n in range(take)]
        octet += 1
    return result


def check_free(endpoints: list[Endpoint]) -> None:
    """Exit with a clear line when one of the endpoints is already taken."""
    for endpoint in endpoints:
        with socket.socket() as sock:
            try:
                sock.bind((endpoint.host, endpoint.port))
            except OSError as exc:
                raise SystemExit(
                    f"{endpoint.host}:{endpoint.port} is in use ({exc.strerror}); "
                    "pick another range with --base-port"
                ) from None


def _raise_nofile(wanted: int) -> None:
    """Lift this process's descriptor limit (inherited by nginx's master) if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY or hard >= wanted else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class NginxFarm:
    """nginx serving TLS on every endpoint, started by ``start`` and ended by ``stop``."""

    def __init__(
        self,
        prefix: Path,
        *,
        cert_file: Path,
        key_file: Path,
        endpoints: list[Endpoint],
        workers: int = 1,
        binary: str = "nginx",
    ) -> None:
        self.prefix = prefix
        self.cert_file = cert_file
        self.key_file = key_file
        self.endpoints = endpoints
        self.workers = workers
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """The nginx.conf text."""
        # Every listening socket takes a connection slot in each worker, so the slots and the
        # descriptor limit are sized from the endpoint count, plus room for the clients.
        slots = len(self.endpoints) + 4096
        user = "user root root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        listens = "".join(f"    listen {e.host}:{e.port} ssl;\n" for e in self.endpoints)
        return (
            f"{user}worker_processes {self.workers};\n"
            f"worker_rlimit_nofile {slots + 1024};\n"
            f"pid {self.prefix}/nginx.pid;\n"
            f"error_log {self.prefix}/error.log crit;\n"
            "events {\n"
            f"  worker_connections {slots};\n"
            "  multi_accept on;\n"
            "}\n"
            "http {\n"
            "  access_log off;\n"
            f"  client_body_temp_path {self.prefix}/body;\n"
            f"  proxy_temp_path {self.prefix}/proxy;\n"
            f"  fastcgi_temp_path {self.prefix}/fastcgi;\n"
            f"  uwsgi_temp_path {self.prefix}/uwsgi;\n"
            f"  scgi_temp_path {self.prefix}/scgi;\n"
            "  server {\n"
            f"{listens}"
            "    server_name localhost;\n"
            f"    ssl_certificate {self.cert_file};\n"
            f"    ssl_certificate_key {self.key_file};\n"
            "    location / { return 200 'ok'; }\n"
            "  }\n"
            "}\n"
        )

    def start(self) -> None:
        """Write the configuration, start nginx and wait until every endpoint accepts."""
        if shutil.which(self.binary) is None and not Path(self.binary).exists():
            raise SystemExit(
                f"{self.binary}: not found; install it with scripts/install-bench.sh (root)"
            )
        for endpoint in self.endpoints:
            if not endpoint.host.startswith("127."):
                raise SystemExit(f"{endpoint.host}: loopback addresses only")
        check_free(self.endpoints)
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.config())
        _raise_nofile(len(self.endpoints) + 4096)
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.prefix / "stderr").open("wb"),
        )
        deadline = time.monotonic() + 30
        for endpoint in (self.endpoints[0], self.endpoints[-1]):
            while True:
                if self.process.poll() is not None:
                    log = (self.prefix / "stderr").read_text().strip()
                    raise SystemExit(f"nginx exited with {self.process.returncode}: {log[-500:]}")
                try:
                    with socket.create_connection((endpoint.host, endpoint.port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"nginx did not listen on {endpoint}") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        """Stop nginx (SIGQUIT lets it close gracefully; SIGKILL if it lingers)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class SilentListeners:
    """Listening sockets nobody accepts on: TCP connects, then silence."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self.sockets: list[socket.socket] = []

    def start(self) -> None:
        """Bind and listen on every endpoint."""
        check_free(self.endpoints)
        for endpoint in self.endpoints:
            if not endpoint.host.startswith("127."):
                raise SystemExit(f"{endpoint.host}: loopback addresses only")
            sock = socket.socket()
            sock.bind((endpoint.host, endpoint.port))
            sock.listen(64)
            self.sockets.append(sock)

    def stop(self) -> None:
        """Close every socket."""
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
