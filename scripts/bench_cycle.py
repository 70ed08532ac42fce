#!/usr/bin/env python3
"""Issues 11 and 24's benchmark: the agent against LF, the minimal reference client, in one run.

Everything runs on 127.0.0.0/8: an nginx farm (``scripts/bench_nginx.py``; install nginx
with ``scripts/install-bench.sh``) presenting a leaf + intermediate chain on up to
--farm-size endpoints (127.0.0.1.. x ports from --base-port; a longer list repeats them
under distinct domain ids), silent listeners on 127.0.0.200 for the "10 % silent" case,
and a fast TrackSSL API in its own process (``scripts/bench_api.py``, with a per-request
delay). LF (``scripts/bench_lf.py``) and ``trackssl-agent check-once`` run as children
against the same targets and API, alternately, both from a venv laid out as ``pip install
.`` leaves it; wall time is process start to exit, CPU is user + system and peak RSS is
``ru_maxrss``, all from ``wait4`` of the child alone. Every run must have posted every
result (the API counts the distinct domain_ids it accepted), or the script exits 1.

Sections (``--only``, comma-separated): ``2000``, ``10000`` and ``50000`` (LF and
check-once wall, CPU per target, peak RSS), ``go`` (the Go agent, nimbleind/trackssl-agent,
built beforehand and given as ``--go-agent PATH``, against check-once at --go-targets: it
has no run-once mode, so its wall is from its start to the API's N-th distinct POST; the
section is skipped without the path, and nothing is ever downloaded), ``delay`` (API
requests delayed --delay, --delay-targets targets), ``silent`` (10 % silent targets vs all
live, check-once), ``rss`` (``run`` with the test hook ``_TRACKSSL_TEST_TIME_SCALE``: idle
VmRSS between cycles), ``startup`` (``--version`` and ``--help``, venv and frozen builds in
dist/ when present), ``discover`` (issue 13: ``discover`` of 127.0.0.0/24 x 20 ports,
mostly closed, a few TLS servers).

    python scripts/bench_cycle.py                # everything, medians of 3 (about 25 min)
    python scripts/bench_cycle.py --only 2000,go --go-agent /tmp/trackssl-go-agent
    python scripts/bench_cycle.py --only 2000    # one section
    python scripts/bench_cycle.py --quick        # 2,000 targets, 1 repetition, short rss
    python scripts/bench_cycle.py --smoke        # 20 targets, every section, < 20 s

Each goal of issues 11 and 24 prints as PASS or MISS with its figure; --json FILE keeps the
raw figures. Exit code 1 when a run failed or lost results (and, with --strict, on a MISS).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_nginx import (  # noqa: E402
    Endpoint,
    NginxFarm,
    SilentListeners,
    endpoints_for,
)

AUTH_TOKEN = "bench-auth-token-0123456789"  # noqa: S105 - a benchmark-only token
AGENT_TOKEN = "bench-agent"  # noqa: S105 - a public id
SCRIPTS = ROOT / "scripts"
SECTIONS = ("2000", "10000", "50000", "go", "delay", "silent", "rss", "startup", "discover")
SIZES = (2000, 10000, 50000)
MIB = 1024 * 1024
PEAK_RSS_MIB = {10000: 60, 50000: 80}
"""Issue 24's peak RSS goals by target count."""


@dataclass(frozen=True)
class ChildRun:
    """What ``wait4`` and the API saw of one child process."""

    label: str
    targets: int
    wall_s: float
    cpu_s: float
    maxrss_kib: int
    exit_code: int
    stats: Mapping[str, Any]
    api_cpu_s: float = 0.0
    """CPU the API process spent while this child ran: it must stay small."""
    tail: str = ""
    started_at: float = 0.0
    """``time.monotonic()`` at the child's start (the API's times are on the same clock)."""

    @property
    def phases(self) -> str:
        """Start to the first GET of the domain list, and the last new POST to the end."""
        get_at, last_at = self.stats.get("get_at") or 0.0, self.stats.get("distinct_at") or 0.0
        if not (self.started_at and get_at and last_at):
            return ""
        ended_at = self.started_at + self.wall_s
        return (
            f"  start->GET {1000 * (get_at - self.started_at):.0f} ms,"
            f" last POST->exit {1000 * (ended_at - last_at):.0f} ms"
        )

    @property
    def cpu_ms_per_target(self) -> float:
        """CPU milliseconds per target."""
        return 1000 * self.cpu_s / max(self.targets, 1)

    @property
    def complete(self) -> bool:
        """Exit code 0 and every domain_id posted, nothing unknown or malformed."""
        return (
            self.exit_code == 0
            and self.stats.get("distinct") == self.targets
            and not self.stats.get("unknown_ids")
            and not self.stats.get("bad_payloads")
            and not self.stats.get("unauthorized")
        )


@dataclass
class Report:
    """Goals and figures collected over the run."""

    lines: list[str] = field(default_factory=list)
    goals: list[tuple[str, bool, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        """Print a progress or figure line now and keep it."""
        print(text, flush=True)
        self.lines.append(text)

    def goal(self, name: str, ok: bool, figure: str) -> None:
        """Record and print one goal."""
        self.goals.append((name, ok, figure))
        self.say(f"  {'PASS' if ok else 'MISS'}  {name}: {figure}")

    def fail(self, text: str) -> None:
        """Record a failed run (a correctness problem, not a missed goal)."""
        self.failures.append(text)
        self.say(f"  FAIL  {text}")


class Api:
    """The benchmark API process (scripts/bench_api.py)."""

    def __init__(self, workdir: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable, str(SCRIPTS / "bench_api.py"),
                "--auth-token", AUTH_TOKEN, "--agent-token", AGENT_TOKEN,
            ],
            stdout=subprocess.PIPE,
            stderr=(workdir / "api.stderr").open("wb"),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert self.process.stdout is not None
        first = self.process.stdout.readline().decode().split()
        if len(first) != 2 or first[0] != "port":
            raise SystemExit(f"the benchmark API did not start: {first}")
        self.url = f"http://127.0.0.1:{first[1]}"

    def configure(self, domains: list[dict[str, Any]] | None = None, delay: float = 0.0) -> None:
        """Set the domain list (when given) and the delay; reset the counters."""
        body: dict[str, Any] = {"delay": delay}
        if domains is not None:
            body["domains"] = domains
        request = Request(  # noqa: S310 - our own loopback http server
            f"{self.url}/_bench/config", data=json.dumps(body).encode(), method="POST"
        )
        with urlopen(request, timeout=30) as response:  # noqa: S310
            response.read()

    def reset(self) -> None:
        """Reset the counters, keeping the list and the delay."""
        delay = float(self.stats()["delay"])
        self.configure(None, delay)

    def stats(self) -> dict[str, Any]:
        """The API's counters."""
        with urlopen(f"{self.url}/_bench/stats", timeout=30) as response:  # noqa: S310
            result: dict[str, Any] = json.loads(response.read())
        return result

    def env(self) -> dict[str, str]:
        """The agent's API configuration."""
        return {
            "TRACKSSL_URL": self.url,
            "TRACKSSL_AUTH_TOKEN": AUTH_TOKEN,
            "TRACKSSL_AGENT_TOKEN": AGENT_TOKEN,
        }

    def stop(self) -> None:
        """End the process."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def domain_list(endpoints: list[Endpoint]) -> list[dict[str, Any]]:
    """The API's ``data`` entries for ``endpoints``, ids from 1 (a repeated endpoint is
    another domain)."""
    return [
        {"domain_id": n + 1, "hostname": e.host, "port": str(e.port)}
        for n, e in enumerate(endpoints)
    ]


PYCACHE = Path(tempfile.gettempdir()) / "bench-cycle-pycache"
"""Where the measured processes keep their compiled modules (``PYTHONPYCACHEPREFIX``), so
that the clone stays clean and no run pays for compiling the agent: an installed agent has
its bytecode (pip compiles at install, the frozen builds carry it)."""


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any TRACKSSL_ setting, plus ``extra``; bytecode
    is written and read under ``PYCACHE`` whatever the caller's ``PYTHONDONTWRITEBYTECODE``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRACKSSL_", "_TRACKSSL_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra)
    return env


def installed_venv(where: Path) -> Path:
    """A venv laid out as ``pip install .`` leaves it, without pip or the network: the
    agent and its dependencies on ``sys.path`` through a ``.pth`` file (not the editable
    install's import hook, which costs every start ~25 ms a user's install does not pay),
    and pip's console-script wrapper. Returns the wrapper's path."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "trackssl_bench.pth").write_text("\n".join([str(ROOT), *deps]) + "\n")
    script = where / "bin" / "trackssl-agent"
    script.write_text(
        f"#!{python}\n"
        "import re\nimport sys\nfrom trackssl_agent.cli import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


def compile_agent() -> None:
    """Compile the agent's modules into ``PYCACHE`` before anything is measured."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "trackssl_agent")],
        env=clean_env({}), check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


class Spawner:
    """The small process that starts measured children (scripts/bench_spawn.py explains)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SCRIPTS / "bench_spawn.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run(self, command: list[str], *, env: Mapping[str, str], workdir: Path) -> dict[str, Any]:
        """Run ``command`` in ``workdir`` (output in files there); wall, CPU, RSS, exit code."""
        assert self.process.stdin is not None and self.process.stdout is not None
        # Files, not pipes: a child printing much would stall on a full pipe.
        request = {
            "argv": command, "env": dict(env), "cwd": str(workdir),
            "stdout": str(workdir / "stdout"), "stderr": str(workdir / "stderr"),
        }  # fmt: skip
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("the benchmark's spawner process died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        """End the spawner (it exits when its stdin closes)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


def run_child(
    label: str,
    command: list[str],
    *,
    env: Mapping[str, str],
    workdir: Path,
    api: Api,
    targets: int,
    spawner: Spawner,
) -> ChildRun:
    """Run ``command`` to its end with the API counters reset; its figures."""
    api.reset()
    workdir.mkdir(parents=True, exist_ok=True)
    api_cpu = float(api.stats()["cpu_s"])
    answer = spawner.run(command, env=env, workdir=workdir)
    stats = api.stats()
    tail = ((workdir / "stderr").read_text(errors="replace").strip()[-400:]).replace("\n", " | ")
    return ChildRun(
        label=label,
        targets=targets,
        wall_s=answer["wall_s"],
        cpu_s=answer["cpu_s"],
        maxrss_kib=answer["maxrss_kib"],
        exit_code=answer["exit_code"],
        stats=stats,
        api_cpu_s=float(stats["cpu_s"]) - api_cpu,
        tail=tail,
        started_at=float(answer.get("started_at", 0.0)),
    )


class Bench:
    """The shared targets and API, and one method per section."""

    def __init__(self, args: argparse.Namespace, workdir: Path, report: Report) -> None:
        self.args = args
        self.workdir = workdir
        self.report = report
        self.api: Api | None = None
        self.spawner: Spawner
        self.farm: list[Endpoint] = []
        """The endpoints nginx serves; ``live`` repeats them up to the largest size."""
        self.live: list[Endpoint] = []
        self.silent: list[Endpoint] = []
        self.runs = 0
        self.cycle_wall: dict[int, float] = {}
        self._installed: Path | None = None

    @property
    def installed(self) -> Path:
        """The agent's script in a venv laid out as ``pip install .`` leaves it (made once):
        LF and check-once both run from it, as a user's would, without the editable
        install's import hook that every start of the development venv pays."""
        if self._installed is None:
            self._installed = installed_venv(self.workdir / "venv")
        return self._installed

    @contextmanager
    def serving(self, live_count: int, silent_count: int) -> Iterator[None]:
        """Start nginx, the silent listeners and the API; stop them all afterwards."""
        from tests.certs import make_chain  # noqa: PLC0415 - only once the path is set

        chain = make_chain(self.workdir / "certs", kind=self.args.key, name="bench")
        self.farm = endpoints_for(
            min(live_count, self.args.farm_size), base_port=self.args.base_port,
            per_address=self.args.ports_per_address, first_octet=1,
        )  # fmt: skip
        self.live = [self.farm[n % len(self.farm)] for n in range(live_count)]
        self.silent = endpoints_for(
            silent_count, base_port=self.args.base_port, per_address=self.args.ports_per_address,
            first_octet=200,
        )  # fmt: skip
        farm = NginxFarm(
            self.workdir / "nginx",
            cert_file=chain.cert_file,
            key_file=chain.key_file,
            endpoints=self.farm,
            workers=self.args.nginx_workers,
        )
        silent = SilentListeners(self.silent)
        started = time.perf_counter()
        spawner: Spawner | None = None
        try:
            farm.start()
            silent.start()
            self.api = Api(self.workdir)
            self.spawner = spawner = Spawner()
            self.report.say(
                f"targets up: nginx ({self.args.nginx_workers} worker(s), {self.args.key} chain) "
                f"on {len(self.farm)} endpoints (targets up to {len(self.live)}), "
                f"{len(self.silent)} silent listeners, API at "
                f"{self.api.url} ({time.perf_counter() - started:.1f} s)"
            )
            yield
        finally:
            if spawner is not None:
                spawner.stop()
            if self.api is not None:
                self.api.stop()
            silent.stop()
            farm.stop()

    def _run(self, kind: str, targets: int, extra_env: Mapping[str, str] | None = None) -> ChildRun:
        assert self.api is not None
        self.runs += 1
        workdir = self.workdir / f"run-{self.runs:03d}-{kind}-{targets}"
        if kind == "lf":
            command = [
                str(self.installed.parent / "python"), str(SCRIPTS / "bench_lf.py"),
                "--url", self.api.url,
                "--auth-token", AUTH_TOKEN, "--agent-token", AGENT_TOKEN,
                "--threads", str(self.args.lf_threads),
            ]  # fmt: skip
            env = clean_env({})
        else:
            command = [str(self.installed), "check-once"]
            env = clean_env(
                {
                    **self.api.env(),
                    "TRACKSSL_STATE_DIR": str(workdir / "state"),
                    "PYTHONPATH": str(ROOT),
                    **(extra_env or {}),
                }
            )
        run = run_child(
            kind, command, env=env, workdir=workdir, api=self.api, targets=targets,
            spawner=self.spawner,
        )  # fmt: skip
        self.report.say(
            f"    {kind:10} {targets:6} targets  wall {run.wall_s:6.2f} s  "
            f"CPU {run.cpu_ms_per_target:5.2f} ms/target  peak RSS {run.maxrss_kib / 1024:6.1f} MiB"
            f"  posted {run.stats.get('distinct')}/{targets}  exit {run.exit_code}"
            f"  (API CPU {1000 * run.api_cpu_s / max(targets, 1):.2f} ms/target){run.phases}"
        )
        if not run.complete:
            self.report.fail(
                f"{kind} at {targets} targets: exit {run.exit_code}, API stats {dict(run.stats)}"
                f"; stderr: {run.tail}"
            )
        return run

    def compare(self, targets: int, *, delay: float = 0.0) -> tuple[list[ChildRun], list[ChildRun]]:
        """LF and check-once alternately, --reps times each, at ``targets`` live endpoints."""
        assert self.api is not None
        self.api.configure(domain_list(self.live[:targets]), delay)
        lf: list[ChildRun] = []
        agent: list[ChildRun] = []
        for _ in range(self.args.reps):
            lf.append(self._run("lf", targets))
            agent.append(self._run("check-once", targets))
        return lf, agent

    def section_size(self, targets: int) -> None:
        """Wall, CPU per target and peak RSS at ``targets``: check-once against LF."""
        self.report.say(f"\n== {targets} targets (medians of {self.args.reps}) ==")
        lf, agent = self.compare(targets)
        lf_wall, agent_wall = med(lf, "wall_s"), med(agent, "wall_s")
        lf_cpu = statistics.median(r.cpu_ms_per_target for r in lf)
        agent_cpu = statistics.median(r.cpu_ms_per_target for r in agent)
        peak = statistics.median(r.maxrss_kib for r in agent) * 1024
        self.cycle_wall[targets] = agent_wall
        self.report.figures[f"targets_{targets}"] = {
            "lf_wall_s": lf_wall, "check_once_wall_s": agent_wall,
            "lf_cpu_ms_per_target": lf_cpu, "check_once_cpu_ms_per_target": agent_cpu,
            "check_once_peak_rss_mib": peak / MIB,
            "runs": [asdict(r) for r in lf + agent],
        }  # fmt: skip
        self.report.say(
            f"  LF {lf_wall:.2f} s, {lf_cpu:.2f} ms/target; check-once {agent_wall:.2f} s, "
            f"{agent_cpu:.2f} ms/target, peak RSS {peak / MIB:.1f} MiB"
        )
        ratio = agent_wall / lf_wall
        self.report.goal(
            f"wall at {targets}: check-once <= 1.10 x LF", ratio <= 1.10, f"{ratio:.2f} x"
        )
        cpu_ratio = agent_cpu / lf_cpu
        self.report.goal(
            f"CPU/target at {targets}: check-once <= 1.15 x LF",
            cpu_ratio <= 1.15,
            f"{cpu_ratio:.2f} x",
        )
        limit = PEAK_RSS_MIB.get(targets, 60 if self.args.smoke else 0)
        if limit:
            self.report.goal(
                f"peak RSS at {targets} <= {limit} MiB",
                peak <= limit * MIB,
                f"{peak / MIB:.1f} MiB",
            )

    def section_go(self) -> None:
        """The Go agent against check-once at --go-targets, zero API latency, alternately."""
        path = self.args.go_agent
        if path is None:
            self.report.say("\n== Go agent: skipped (no --go-agent PATH) ==")
            return
        if not path.is_file() or not os.access(path, os.X_OK):
            self.report.fail(f"--go-agent {path}: not an executable file")
            return
        assert self.api is not None
        targets = min(self.args.go_targets, len(self.live))
        self.report.say(
            f"\n== Go agent ({path}), {targets} targets (medians of {self.args.reps}) =="
        )
        self.api.configure(domain_list(self.live[:targets]))
        go: list[ChildRun] = []
        agent: list[ChildRun] = []
        for _ in range(self.args.reps):
            go.append(self._run_go(path, targets))
            agent.append(self._run("check-once", targets))
        go_wall, agent_wall = med(go, "wall_s"), med(agent, "wall_s")
        self.report.figures["go"] = {
            "targets": targets, "go_wall_s": go_wall, "check_once_wall_s": agent_wall,
            "go_cpu_ms_per_target": statistics.median(r.cpu_ms_per_target for r in go),
            "runs": [asdict(r) for r in go + agent],
        }  # fmt: skip
        self.report.say(f"  Go agent {go_wall:.2f} s; check-once {agent_wall:.2f} s")
        ratio = go_wall / agent_wall
        self.report.goal(
            f"Go agent wall at {targets} >= 1.1 x check-once", ratio >= 1.1, f"{ratio:.2f} x"
        )

    def _run_go(self, path: Path, targets: int) -> ChildRun:
        """The Go agent from its start to the API's ``targets``-th distinct POST; then it is
        killed (it would sleep 4 hours). CPU and peak RSS are read from /proc just before."""
        assert self.api is not None
        self.runs += 1
        workdir = self.workdir / f"run-{self.runs:03d}-go-{targets}"
        workdir.mkdir(parents=True)
        self.api.reset()
        api_cpu = float(self.api.stats()["cpu_s"])
        env = clean_env(self.api.env())
        with (workdir / "stdout").open("wb") as out:
            started = time.monotonic()
            process = subprocess.Popen(
                [str(path)], env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                stats, usage = self._wait_for_posts(process, targets, started)
            finally:
                process.kill()
                process.wait()
        reached = stats.get("distinct") == targets
        run = ChildRun(
            label="go-agent", targets=targets,
            wall_s=float(stats["distinct_at"]) - started if reached else math.inf,
            cpu_s=usage[0], maxrss_kib=usage[1], exit_code=0 if reached else 1,
            stats=stats, api_cpu_s=float(stats["cpu_s"]) - api_cpu,
            tail=(workdir / "stdout").read_text(errors="replace")[-400:].replace("\n", " | "),
            started_at=started,
        )  # fmt: skip
        self.report.say(
            f"    {'go-agent':10} {targets:6} targets  wall {run.wall_s:6.2f} s  "
            f"CPU {run.cpu_ms_per_target:5.2f} ms/target  peak RSS {run.maxrss_kib / 1024:6.1f} MiB"
            f"  posted {stats.get('distinct')}/{targets}  (start to the last POST){run.phases}"
        )
        if not run.complete:
            self.report.fail(f"go-agent at {targets} targets: {dict(stats)}; output: {run.tail}")
        return run

    def _wait_for_posts(
        self, process: subprocess.Popen[bytes], targets: int, started: float
    ) -> tuple[dict[str, Any], tuple[float, int]]:
        """Poll the API until ``targets`` distinct posts arrived (or the process ended or
        --go-timeout passed); the last stats and the process's (CPU seconds, VmHWM KiB)."""
        assert self.api is not None
        while True:
            stats = self.api.stats()
            done = stats.get("distinct", 0) >= targets
            if done or process.poll() is not None:
                break
            if time.monotonic() - started > self.args.go_timeout:
                break
            time.sleep(0.02)
        return stats, proc_usage(process.pid)

    def section_delay(self) -> None:
        """Every API request delayed: check-once against LF."""
        targets, delay = min(self.args.delay_targets, len(self.live)), self.args.delay
        self.report.say(f"\n== API delayed {delay * 1000:.0f} ms, {targets} targets ==")
        lf, agent = self.compare(targets, delay=delay)
        lf_wall, agent_wall = med(lf, "wall_s"), med(agent, "wall_s")
        self.report.figures["delay"] = {
            "delay_s": delay, "targets": targets, "lf_wall_s": lf_wall,
            "check_once_wall_s": agent_wall, "runs": [asdict(r) for r in lf + agent],
        }  # fmt: skip
        ratio = agent_wall / lf_wall
        self.report.say(f"  LF {lf_wall:.2f} s; check-once {agent_wall:.2f} s")
        self.report.goal(
            f"wall with {delay * 1000:.0f} ms API delay at {targets}: check-once <= 1.0 x LF",
            ratio <= 1.0,
            f"{ratio:.2f} x",
        )
        assert self.api is not None
        self.api.configure(None, 0.0)

    def section_silent(self) -> None:
        """10 % of the targets silent: extra time against the bound of issue 11."""
        assert self.api is not None
        total = min(self.args.silent_targets, len(self.live))
        silent = min(len(self.silent), math.ceil(total * self.args.silent_share))
        timeout, concurrency = self.args.silent_timeout, self.args.silent_concurrency
        self.report.say(
            f"\n== {silent} of {total} targets silent (timeout {timeout:g} s, "
            f"concurrency {concurrency}) =="
        )
        env = {"TRACKSSL_TIMEOUT": f"{timeout:g}", "TRACKSSL_CONCURRENCY": str(concurrency)}
        # Every tenth entry is silent, so they spread over the cycle as dead hosts do.
        step = max(total // max(silent, 1), 1)
        mixed: list[Endpoint] = []
        live_iter, silent_iter = iter(self.live), iter(self.silent[:silent])
        for n in range(total):
            pick = next(silent_iter, None) if n % step == step - 1 else None
            mixed.append(pick or next(live_iter))
        baseline: list[ChildRun] = []
        with_silent: list[ChildRun] = []
        for _ in range(self.args.reps):
            self.api.configure(domain_list(self.live[:total]))
            baseline.append(self._run("check-once", total, env))
            self.api.configure(domain_list(mixed))
            with_silent.append(self._run("silent", total, env))
        extra = med(with_silent, "wall_s") - med(baseline, "wall_s")
        bound = math.ceil(silent / concurrency) * timeout + 1
        self.report.figures["silent"] = {
            "targets": total, "silent": silent, "timeout_s": timeout, "concurrency": concurrency,
            "all_live_wall_s": med(baseline, "wall_s"),
            "with_silent_wall_s": med(with_silent, "wall_s"), "extra_s": extra, "bound_s": bound,
        }  # fmt: skip
        self.report.say(
            f"  all live {med(baseline, 'wall_s'):.2f} s; with silent "
            f"{med(with_silent, 'wall_s'):.2f} s"
        )
        self.report.goal(
            f"10 % silent: extra <= ceil({silent}/{concurrency}) x {timeout:g} s + 1 s",
            extra <= bound,
            f"{extra:.2f} s extra, bound {bound:.1f} s",
        )

    def section_rss(self) -> None:
        """``run``: VmRSS while idle after each cycle."""
        assert self.api is not None
        targets, cycles = min(self.args.rss_targets, len(self.live)), self.args.rss_cycles
        cycle_guess = self.cycle_wall.get(targets) or 0.0025 * targets + 1
        # Start-to-start interval: the cycle, a margin for noise, then an idle window to sample.
        interval = self.args.rss_interval or cycle_guess * 1.2 + self.args.settle + 2
        scale = min(max(60 / interval, 1.0), 3600.0)
        self.report.say(
            f"\n== run: idle RSS over {cycles} cycles of {targets} targets "
            f"(interval {60 / scale:.1f} s) =="
        )
        self.api.configure(domain_list(self.live[:targets]))
        workdir = self.workdir / "run"
        workdir.mkdir()
        log = workdir / "agent.jsonl"
        env = clean_env(
            {
                **self.api.env(),
                "TRACKSSL_STATE_DIR": str(workdir / "state"),
                "PYTHONPATH": str(ROOT),
                "_TRACKSSL_TEST_TIME_SCALE": f"{scale:.6g}",
            }
        )
        command = [
            str(self.installed), "run", "--interval", "1m",
            "--log-file", str(log), "--log-format", "json",
        ]  # fmt: skip
        samples: list[dict[str, Any]] = []
        with (workdir / "stderr").open("wb") as err:
            agent = subprocess.Popen(
                command, env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + cycles * (60 / scale + 4 * cycle_guess + 30)
                seen = 0
                while len(samples) < cycles and time.monotonic() < deadline:
                    if agent.poll() is not None:
                        self.report.fail(f"run exited with {agent.returncode} early")
                        break
                    fresh = cycle_records(log)[seen:]
                    if not fresh:
                        time.sleep(0.05)
                        continue
                    seen += 1
                    time.sleep(self.args.settle)
                    samples.append({**idle_sample(agent.pid), **fresh[0]})
                    self.report.say(
                        f"    cycle {fresh[0].get('cycle')}: {fresh[0].get('duration_s')} s, "
                        f"delivered {fresh[0].get('delivered')}, idle VmRSS "
                        f"{samples[-1]['rss_kib'] / 1024:.1f} MiB"
                        f"{'' if samples[-1]['idle'] else ' (CPU busy while sampled)'}"
                    )
            finally:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(60)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
        if len(samples) < cycles:
            self.report.fail(f"run: {len(samples)} of {cycles} cycles seen")
        if samples:
            self.rss_goals(targets, 60 / scale, samples)

    def rss_goals(self, targets: int, interval: float, samples: list[dict[str, Any]]) -> None:
        """The ``run`` memory goals from the idle samples."""
        lost = [s for s in samples if s.get("delivered") != targets]
        if lost:
            self.report.fail(f"run: {len(lost)} cycle(s) did not deliver all {targets} results")
        # A sample taken while the next cycle already ran (an overrun on a loaded machine) is
        # not idle memory; the goals use the idle ones, and the busy count is printed.
        rss = [s["rss_kib"] * 1024 for s in samples if s["idle"]] or [
            s["rss_kib"] * 1024 for s in samples
        ]
        self.report.figures["rss"] = {
            "targets": targets,
            "interval_s": interval,
            "samples": samples,
        }
        growth = rss[-1] - rss[0]
        busy = sum(not s["idle"] for s in samples)
        self.report.goal(
            f"run idle RSS after a {targets}-target cycle <= 30 MiB",
            rss[0] <= 30 * MIB,
            f"{rss[0] / MIB:.1f} MiB after cycle 1",
        )
        self.report.goal(
            f"run idle RSS <= 30 MiB and flat over {len(samples)} cycles (growth <= 2 MiB)",
            max(rss) <= 30 * MIB and growth <= 2 * MIB,
            f"max {max(rss) / MIB:.1f} MiB, last {rss[-1] / MIB:.1f} MiB, "
            f"growth {growth / MIB:+.1f} MiB"
            f"{f', {busy} sample(s) not idle' if busy else ''}",
        )

    def section_startup(self) -> None:
        """``--version`` and ``--help``: median wall time of the venv and frozen builds."""
        reps = self.args.startup_reps
        self.report.say(f"\n== start-up (median of {reps}) ==")
        builds = [("venv", [str(self.installed)], 0.100)]
        single = ROOT / "dist" / "trackssl-agent"
        folder = ROOT / "dist" / "trackssl-agent-folder" / "trackssl-agent"
        for name, path, limit in (("single file", single, 0.300), ("folder build", folder, 0.150)):
            if path.exists():
                builds.append((name, [str(path)], limit))
            else:
                self.report.say(f"  ({name} not built: {path} missing; scripts/build-binary.sh)")
        env = clean_env({})
        for name, command, limit in builds:
            for flag in ("--version", "--help"):
                wall = median_wall([*command, flag], env=env, cwd=self.workdir, reps=reps)
                self.report.figures[f"startup {name} {flag}"] = wall
                self.report.goal(
                    f"{name} {flag} <= {limit * 1000:.0f} ms",
                    wall <= limit,
                    f"{wall * 1000:.0f} ms",
                )

    def section_discover(self) -> None:
        """``discover`` of 127.0.0.0/24 x 20 ports, mostly closed: wall time (issue 13)."""
        from tests.certs import make_chain  # noqa: PLC0415 - only once the path is set
        from tests.tls_servers import TcpServer, server_context, tls_handler  # noqa: PLC0415

        base, rate = self.args.discover_base_port, self.args.discover_rate
        context = server_context(make_chain(self.workdir / "discover", kind=self.args.key))
        # Five TLS endpoints among the 5,080 pairs, on different addresses and ports.
        servers = [
            TcpServer(tls_handler(context), host=f"127.0.0.{10 * n}", port=base + 4 * n - 1)
            for n in range(1, 6)
        ]
        command = [
            sys.executable, "-m", "trackssl_agent", "discover", "127.0.0.0/24",
            "--ports", f"{base}-{base + 19}", "--rate", str(rate),
            "--concurrency", str(self.args.discover_concurrency), "--timeout", "5",
        ]  # fmt: skip
        self.report.say(
            f"\n== discover 127.0.0.0/24 x 20 ports, {len(servers)} TLS servers, --rate {rate} =="
        )
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, env=clean_env({"PYTHONPATH": str(ROOT)}), cwd=self.workdir,
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
        finally:
            wall = time.perf_counter() - started
            for server in servers:
                server.close()
        found = len(done.stdout.splitlines())
        summary = (done.stderr.strip().splitlines() or [""])[-1]
        self.report.figures["discover"] = {"wall_s": wall, "found": found, "summary": summary}
        self.report.say(f"  {summary}; wall {wall:.2f} s (process start to exit)")
        if done.returncode != 0 or found != len(servers):
            self.report.fail(
                f"discover: exit {done.returncode}, {found} of {len(servers)} TLS servers found; "
                f"stderr: {done.stderr.strip()[-300:]}"
            )
        self.report.goal(
            "discover /24 x 20 ports, mostly closed, <= 5 s", wall <= 5.0, f"{wall:.2f} s"
        )


def med(runs: list[ChildRun], name: str) -> float:
    """Median of one attribute."""
    return float(statistics.median(getattr(r, name) for r in runs))


def median_wall(command: list[str], *, env: Mapping[str, str], cwd: Path, reps: int) -> float:
    """Median wall time of ``command`` over ``reps`` runs after one untimed warm-up."""
    times: list[float] = []
    for n in range(reps + 1):
        started = time.perf_counter()
        done = subprocess.run(command, env=dict(env), cwd=cwd, capture_output=True, check=False)
        if n:
            times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(
                f"{' '.join(command)} exited {done.returncode}: {done.stderr[-300:]!r}"
            )
    return float(statistics.median(times))


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and peak RSS (VmHWM, KiB) of a running process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0, 0
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    return cpu, peak


def cycle_records(log: Path) -> list[dict[str, Any]]:
    """The JSON log's cycle summary records."""
    if not log.exists():
        return []
    records = []
    for line in log.read_text().splitlines():
        if '"cycle' in line:
            record = json.loads(line)
            if str(record.get("event", "")).startswith("cycle") and "duration_s" in record:
                records.append(record)
    return records


def idle_sample(pid: int) -> dict[str, Any]:
    """VmRSS of ``pid``, and whether it used (almost) no CPU over a short window around it."""

    def ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before = ticks()
    time.sleep(0.3)
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {"rss_kib": rss, "idle": ticks() - before <= 3}


def machine() -> str:
    """A line describing this machine and its load."""
    model = "unknown CPU"
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.exists():
        for line in with_cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPU(s), {model}; Python {sys.version.split()[0]}; load average {load}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with --quick and --smoke applied."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[2:]),
    )  # fmt: skip
    add = parser.add_argument
    add(
        "--only",
        default=",".join(SECTIONS),
        help=f"sections, comma-separated: {','.join(SECTIONS)}",
    )
    add("--reps", type=int, default=3, help="repetitions per measurement (medians)")
    add("--quick", action="store_true", help="2000 targets, 1 repetition, 5 rss cycles at 2000")
    add("--smoke", action="store_true", help="20 targets, every section, 1 repetition, < 20 s")
    add("--strict", action="store_true", help="exit 1 on any MISS as well")
    add("--json", type=Path, help="write the raw figures to this file")
    add(
        "--key", choices=("rsa", "ec"), default="ec",
        help="key type of the chain (ec: nginx signs cheaply and stays out of the way)",
    )  # fmt: skip
    add("--nginx-workers", type=int, default=1)
    add(
        "--farm-size", type=int, default=10000,
        help="nginx endpoints at most; longer target lists repeat them (distinct domain ids)",
    )  # fmt: skip
    add("--go-agent", type=Path, help="the built Go agent (nimbleind/trackssl-agent) to time")
    add("--go-targets", type=int, default=2000)
    add("--go-timeout", type=float, default=600, help="seconds the Go agent may take")
    add("--base-port", type=int, default=20000)
    add("--ports-per-address", type=int, default=2000)
    add("--lf-threads", type=int, default=16)
    add("--delay", type=float, default=0.15, help="API delay of the delay section, seconds")
    add("--delay-targets", type=int, default=500)
    add("--silent-targets", type=int, default=2000)
    add("--silent-share", type=float, default=0.10)
    add("--silent-timeout", type=float, default=3.0)
    add("--silent-concurrency", type=int, default=64, help="the agent's default")
    add("--rss-targets", type=int, default=10000)
    add("--rss-cycles", type=int, default=20)
    add("--rss-interval", type=float, default=0.0, help="seconds; 0: from the measured cycle")
    add("--settle", type=float, default=1.0, help="idle seconds before sampling VmRSS")
    add("--startup-reps", type=int, default=10)
    add("--discover-base-port", type=int, default=24000, help="first of discover's 20 ports")
    add("--discover-rate", type=int, default=20000, help="discover's --rate")
    add("--discover-concurrency", type=int, default=256, help="discover's --concurrency")
    add("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    if args.quick:
        args.reps, args.rss_targets, args.rss_cycles = 1, 2000, 5
        sections = [s for s in sections if s not in ("10000", "50000")]
    if args.smoke:
        args.reps, args.go_targets = 1, 20
        args.delay_targets, args.silent_targets, args.silent_timeout = 20, 20, 1.0
        args.rss_targets, args.rss_cycles, args.rss_interval, args.settle = 20, 2, 1.5, 0.3
        args.startup_reps = 3
        sections = ["20" if s == "2000" else s for s in sections if s not in ("10000", "50000")]
    args.sections = sections
    unknown = set(args.sections) - {*SECTIONS, "20"}
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and print the goals."""
    args = parse_args(argv)
    report = Report()
    sizes = [n for n in (20, *SIZES) if str(n) in args.sections]
    needs = [*sizes]
    needs += [args.go_targets] if "go" in args.sections and args.go_agent else []
    needs += [args.delay_targets] if "delay" in args.sections else []
    needs += [args.silent_targets] if "silent" in args.sections else []
    needs += [args.rss_targets] if "rss" in args.sections else []
    silent_count = (
        math.ceil(args.silent_targets * args.silent_share) if "silent" in args.sections else 0
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-cycle-"))
    started = time.perf_counter()
    compile_agent()
    report.say(f"bench_cycle: {machine()}")
    report.say(f"sections: {', '.join(args.sections)}; work dir {workdir}")
    bench = Bench(args, workdir, report)
    sections: dict[str, Callable[[], None]] = {
        **{str(n): functools.partial(bench.section_size, n) for n in sizes},
        "delay": bench.section_delay,
        "silent": bench.section_silent,
        "rss": bench.section_rss,
        "go": bench.section_go,
    }
    try:
        if needs:
            with bench.serving(max(needs), silent_count):
                for name in args.sections:
                    if name in sections:
                        sections[name]()
        if "startup" in args.sections:
            bench.section_startup()
        if "discover" in args.sections:
            bench.section_discover()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    report.say(f"\n== summary ({elapsed:.0f} s; {machine()}) ==")
    for name, ok, figure in report.goals:
        report.say(f"  {'PASS' if ok else 'MISS'}  {name}: {figure}")
    for failure in report.failures:
        report.say(f"  FAIL  {failure}")
    if args.json:
        report.figures["elapsed_s"] = elapsed
        report.figures["machine"] = machine()
        report.figures["goals"] = [
            {"goal": g, "pass": ok, "figure": f} for g, ok, f in report.goals
        ]
        args.json.write_text(json.dumps(report.figures, indent=1, default=str))
    missed = any(not ok for _, ok, _ in report.goals)
    return 1 if report.failures or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
