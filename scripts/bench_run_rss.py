#!/usr/bin/env python3
"""Benchmark: idle RSS of ``run`` after each cycle over N loopback targets (Linux).

Starts a few ``openssl s_server`` processes and the fake TrackSSL API (``tests/api_server.py``)
on 127.0.0.1, then ``python -m trackssl_agent run`` as a child with a JSON log file and the
hidden test hook ``_TRACKSSL_TEST_TIME_SCALE`` so that ``--interval 1m`` becomes a few
seconds. Each time the log shows a cycle's summary line the agent is idle until the next
cycle; the script waits a moment and reads ``VmRSS`` from ``/proc/PID/status``. It prints one
JSON line: RSS after the 1st and the last cycle, min and max over all, and cycle durations.
Loopback only.

    python scripts/bench_run_rss.py --targets 500 --cycles 20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.loopback_servers import start_openssl_servers
from tests.api_server import ApiServer
from tests.certs import make_chain


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS in /proc: Linux only")


def cycle_lines(log: Path, seen: int) -> list[dict[str, Any]]:
    """The JSON log's cycle summary records, from the ``seen``-th on."""
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("event") == "cycle"][seen:]


def main() -> None:
    """Run the benchmark and print one JSON line of figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", type=int, default=500)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--scale", type=float, default=15, help="1m interval / scale seconds")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds idle before sampling")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ApiServer() as api:
        chain = make_chain(Path(tmp), kind="ec")
        procs, ports = start_openssl_servers(chain.cert_file, chain.key_file, args.servers)
        log = Path(tmp) / "agent.jsonl"
        env = {
            **os.environ,
            **api.env(),
            "TRACKSSL_STATE_DIR": str(Path(tmp) / "state"),
            "_TRACKSSL_TEST_TIME_SCALE": str(args.scale),
        }
        agent = None
        samples: list[dict[str, Any]] = []
        try:
            api.domains = [
                {"domain_id": i + 1, "hostname": "127.0.0.1", "port": str(ports[i % len(ports)])}
                for i in range(args.targets)
            ]
            agent = subprocess.Popen(
                [
                    sys.executable, "-m", "trackssl_agent", "run", "--interval", "1m",
                    "--timeout", "5", "--log-file", str(log), "--log-format", "json",
                ],
                env=env, cwd=tmp, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + args.cycles * (60 / args.scale + 30)
            while len(samples) < args.cycles and time.monotonic() < deadline:
                if agent.poll() is not None:
                    raise SystemExit(f"run exited with {agent.returncode}")
                fresh = cycle_lines(log, len(samples))
                if not fresh:
                    time.sleep(0.05)
                    continue
                time.sleep(args.settle)
                record = fresh[0]
                samples.append(
                    {
                        "cycle": record["cycle"],
                        "rss_kib": rss_kib(agent.pid),
                        "duration_s": record.get("duration_s"),
                        "retrieved": record.get("retrieved"),
                        "delivered": record.get("delivered"),
                    }
                )
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(30)
        finally:
            if agent is not None and agent.poll() is None:
                agent.kill()
            for proc in procs:
                proc.kill()
    rss = [s["rss_kib"] for s in samples]
    print(
        json.dumps(
            {
                "targets": args.targets,
                "cycles": len(samples),
                "interval_s": 60 / args.scale,
                "rss_mib_after_first": round(rss[0] / 1024, 1),
                "rss_mib_after_last": round(rss[-1] / 1024, 1),
                "rss_mib_min": round(min(rss) / 1024, 1),
                "rss_mib_max": round(max(rss) / 1024, 1),
                "posts": len(api.posted),
                "exit_code": code,
                "samples": samples,
            }
        )
    )


if __name__ == "__main__":
    main()
