#!/usr/bin/env python3
"""Benchmark: handshakes per second and peak RSS of ``probe`` over loopback targets.

Starts a few ``openssl s_server`` processes on 127.0.0.1 (C servers, so the server side is
not the bottleneck of a Python measurement), then runs ``trackssl-agent probe --json`` over
N targets spread across them as a child process, and reports wall time, handshakes/s and
the child's peak RSS (getrusage of children). Loopback only.

``--acceptance`` measures SPEC acceptance 2 instead (the speed goal the unit tests only
check the shape of): ``check-once`` as a child against the loopback fake API with 50
targets, 40 of them never answering, ``--timeout 2``; the goal is under 15 s with all 50
posted. It prints PASS or MISS and exits 1 on a MISS.

    python scripts/bench_probe.py --targets 200 --servers 4
    python scripts/bench_probe.py --acceptance
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

ROOT = Path(__file__).resolve().parent.parent

ACCEPTANCE_GOAL_S = 15.0


def acceptance() -> int:
    """SPEC acceptance 2: 10 good and 40 silent targets, --timeout 2, under 15 s."""
    from tests.api_server import ApiServer, domain_entries  # noqa: PLC0415
    from tests.cli_helpers import agent_environ  # noqa: PLC0415
    from tests.tls_servers import server_context, silent_server, tls_server  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp, ApiServer() as api:
        chain = make_chain(Path(tmp), kind="ec")
        servers = [tls_server(server_context(chain)) for _ in range(10)]
        servers += [silent_server() for _ in range(40)]
        try:
            api.domains = domain_entries({n: s.port for n, s in enumerate(servers)})
            env = agent_environ(
                **api.env(), TRACKSSL_STATE_DIR=f"{tmp}/state", PYTHONPATH=str(ROOT)
            )
            command = [sys.executable, "-m", "trackssl_agent", "check-once", "--timeout", "2"]
            started = time.perf_counter()
            done = subprocess.run(
                command, env=env, cwd=tmp, capture_output=True, text=True, check=False
            )
            wall = time.perf_counter() - started
        finally:
            for server in servers:
                server.close()
        posted = len(set(api.posted_ids()))
    ok = done.returncode == 0 and posted == 50 and wall < ACCEPTANCE_GOAL_S
    verdict = "PASS" if ok else "MISS"
    print(
        f"{verdict} acceptance 2: 50 targets (40 silent), --timeout 2: {wall:.2f} s "
        f"(goal < {ACCEPTANCE_GOAL_S:g} s), {posted} of 50 posted, exit {done.returncode}"
    )
    return 0 if ok else 1


def main() -> None:
    """Run the benchmark and print one JSON line of figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--acceptance", action="store_true", help="SPEC acceptance 2 instead")
    args = parser.parse_args()
    if args.acceptance:
        raise SystemExit(acceptance())
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
