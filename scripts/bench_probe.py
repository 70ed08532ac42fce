#!/usr/bin/env python3
"""Benchmark: handshakes per second and peak RSS of ``probe`` over loopback targets.

Starts a few ``openssl s_server`` processes on 127.0.0.1 (C servers, so the server side is
not the bottleneck of a Python measurement), then runs ``trackssl-agent probe --json`` over
N targets spread across them as a child process, and reports wall time, handshakes/s and
the child's peak RSS (getrusage of children). Loopback only.

    python scripts/bench_probe.py --targets 200 --servers 4
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.certs import make_chain


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


def main() -> None:
    """Run the benchmark and print one JSON line of figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        chain = make_chain(Path(tmp), kind="ec")
        procs = []
        ports = []
        for _ in range(args.servers):
            port = free_port()
            command = [
                "openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-quiet",
                "-cert", str(chain.cert_file), "-key", str(chain.key_file),
            ]  # fmt: skip
            server = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            procs.append(server)
            ports.append(port)
        try:
            for port in ports:
                wait_listening(port)
            targets = [f"127.0.0.1:{ports[i % len(ports)]}" for i in range(args.targets)]
            command = [
                sys.executable, "-m", "trackssl_agent", "probe", "--json",
                "--timeout", str(args.timeout), *targets,
            ]  # fmt: skip
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            for proc in procs:
                proc.kill()
        results = json.loads(done.stdout)
        ok = sum(1 for r in results if r["ok"])
        print(
            json.dumps(
                {
                    "targets": args.targets,
                    "ok": ok,
                    "exit_code": done.returncode,
                    "wall_s": round(wall, 3),
                    "handshakes_per_s": round(ok / wall, 1),
                    "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                    "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                }
            )
        )


if __name__ == "__main__":
    main()
