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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.loopback_servers import start_openssl_servers
from tests.certs import make_chain


def main() -> None:
    """Run the benchmark and print one JSON line of figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        chain = make_chain(Path(tmp), kind="ec")
        procs, ports = start_openssl_servers(chain.cert_file, chain.key_file, args.servers)
        try:
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
