"""``run`` end to end: the real process (``python -m trackssl_agent run``) against the fake
TrackSSL API and real TLS targets, all on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests import tls_servers
from tests.api_server import AUTH_TOKEN, UNAUTHORIZED, ApiServer, domain_entries
from tests.certs import make_chain
from tests.cli_helpers import agent_environ
from tests.listeners import closed_port
from trackssl_agent import __version__
from trackssl_agent.agent.scheduler import TIME_SCALE_VAR
from trackssl_agent.agent.signals import SECOND_AFTER
from trackssl_agent.cli import cli
from trackssl_agent.errors import ConfigError

AGENT = [sys.executable, "-m", "trackssl_agent"]


@dataclass
class Agent:
    """A running agent process and the files it writes to."""

    proc: subprocess.Popen[bytes]
    log: Path
    stderr: Path
    started: float

    def records(self) -> list[dict[str, Any]]:
        """The JSON log so far, one object per line (a half-written last line is left out)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.endswith("\n")]

    def events(self, name: str) -> list[dict[str, Any]]:
        """Log records whose ``event`` field is ``name``."""
        return [r for r in self.records() if r.get("event") == name]

    def wait_for(self, predicate: Callable[[], object], timeout: float = 20) -> None:
        """Poll ``predicate`` until true; fail with the agent's output otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not predicate():
            pytest.fail(f"condition not met; rc={self.proc.poll()}\n{self.output()}")

    def output(self) -> str:
        """The log and stderr, for failure messages and secret checks."""
        log = self.log.read_text(encoding="utf-8") if self.log.exists() else ""
        return log + self.stderr.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the exit took."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - began


def agent_env(api: ApiServer, state: Path, scale: float | None, **extra: str) -> dict[str, str]:
    """The process environment minus anything ``foreign``, plus the fake API's tokens (and
    ``extra`` variables, such as a test hook)."""
    env = agent_environ(**api.env(), TRACKSSL_STATE_DIR=str(state), **extra)
    if scale is not None:
        env[TIME_SCALE_VAR] = str(scale)
    return env


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Start ``run`` processes with a JSON log file; kills any left at the end."""
    agents: list[Agent] = []

    def launch(
        api: ApiServer,
        state: Path,
        *args: str,
        scale: float | None = None,
        new_session: bool = False,
        **extra: str,
    ) -> Agent:
        index = len(agents)
        log = tmp_path / f"agent{index}.jsonl"
        stderr = tmp_path / f"agent{index}.stderr"
        command = [*AGENT, "run", "--log-file", str(log), "--log-format", "json", *args]
        with stderr.open("wb") as err:
            proc = subprocess.Popen(
                command,
                env=agent_env(api, state, scale, **extra),
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=new_session,  # its own process group, as a terminal's
            )
        agent = Agent(proc, log, stderr, time.monotonic())
        agents.append(agent)
        return agent

    yield launch
    for agent in agents:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        assert AUTH_TOKEN not in agent.output(), "the auth token reached the log or stderr"


@pytest.fixture(scope="module")
def tls_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tls_servers.TcpServer]:
    """A TLS server presenting a leaf signed by an intermediate."""
    chain = make_chain(tmp_path_factory.mktemp("run-certs"), kind="ec", name="run")
    server = tls_servers.tls_server(tls_servers.server_context(chain))
    with tls_servers.running(server):
        yield server


@pytest.fixture
def silent() -> Iterator[tls_servers.TcpServer]:
    """A loopback listener that accepts and never answers."""
    with tls_servers.running(tls_servers.silent_server()) as server:
        yield server


def test_first_cycle_at_once_json_log_and_no_token(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, tls_target: Any
) -> None:
    """The first cycle starts at once; the JSON log has one object per line with the start
    line, one line per failed target, the summary with the next run; no auth token even at
    debug level; SIGTERM while idle exits 0 at once."""
    refused = closed_port()
    api_server.domains = domain_entries({1: tls_target.port, 2: tls_target.port, 3: refused})
    agent = start(api_server, state_dir, "--interval", "1h", "--log-level", "debug")
    agent.wait_for(lambda: agent.events("cycle"))
    first_get = api_server.posts("domains")[0].at
    assert first_get - agent.started < 10  # interpreter start-up included
    assert sorted(api_server.posted_ids()) == [1, 2, 3]

    (begin,) = agent.events("start")
    assert begin["version"] == __version__
    assert begin["interval_s"] == 3600
    assert begin["url"] == api_server.url
    assert begin["agent_token"] == "agent-..."  # noqa: S105 - the shown prefix, not a secret
    assert begin["config"].startswith("none")
    (failure,) = agent.events("target_failed")
    assert failure["kind"] == "refused"
    assert f"127.0.0.1:{refused}" in failure["message"]
    (cycle,) = agent.events("cycle")
    assert cycle["domains"] == 3
    assert cycle["retrieved"] == 2
    assert cycle["failed_by_kind"] == {"refused": 1}
    assert cycle["delivered"] == 3
    assert cycle["queued"] == 0
    assert "next run at" in cycle["message"]
    ahead = datetime.fromisoformat(cycle["next_run"]) - datetime.fromisoformat(cycle["time"])
    assert 3500 < ahead.total_seconds() < 3600 + 180 + 5  # interval + jitter, minus the cycle
    assert any(r["level"] == "debug" for r in agent.records())

    code, took = agent.stop(timeout=10)
    assert code == 0
    assert took < 8  # at once, where the next cycle is an hour away
    assert agent.events("stopped")
    assert AUTH_TOKEN not in agent.output()


def test_sigterm_mid_cycle_exits_0_in_time_and_check_once_delivers_the_rest(
    start: Callable[..., Agent],
    api_server: ApiServer,
    state_dir: Path,
    tls_target: Any,
    silent: tls_servers.TcpServer,
) -> None:
    """SIGTERM while probes hang on never-answering targets: no new probe starts, the
    process exits 0 within timeout + 5 s, and a following check-once delivers the results
    it had not, even though the domain list no longer names them."""
    timeout = 3.0
    good = {n: tls_target.port for n in range(1, 5)}
    hanging = {n: silent.port for n in range(5, 17)}
    api_server.domains = domain_entries({**good, **hanging})
    agent = start(
        api_server, state_dir, "--timeout", str(timeout), "--concurrency", "4", "--interval", "1h"
    )
    agent.wait_for(lambda: sorted(api_server.posted_ids()) == [1, 2, 3, 4])
    agent.wait_for(lambda: len(silent.connections) == 4)
    time.sleep(0.3)
    code, took = agent.stop(timeout=timeout + 10)
    assert code == 0, agent.output()
    assert took < timeout + 5
    assert silent.accepted_before_now() == 4, "a probe started after the stop signal"
    assert sorted(api_server.posted_ids()) == [1, 2, 3, 4]
    assert agent.events("stop")
    (cycle,) = agent.events("cycle")
    assert cycle["queued"] == 4
    assert cycle["message"].endswith("; stopping")

    api_server.domains = []
    env = agent_env(api_server, state_dir, None)
    done = subprocess.run(
        [*AGENT, "check-once"], env=env, cwd=state_dir.parent, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    delivered = {p["domain_id"]: p for p in api_server.posted[4:]}
    assert sorted(delivered) == [5, 6, 7, 8]
    assert all(p["error"].startswith("timeout:") for p in delivered.values())
    assert AUTH_TOKEN.encode() not in done.stdout + done.stderr


def test_second_signal_exits_at_once(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, silent: Any
) -> None:
    """A second SIGTERM (sent past the window in which copies count as one request) while
    probes hang with a 60 s deadline exits at once with 128 + SIGTERM; the outbox is
    write-ahead, so nothing is lost by not waiting."""
    api_server.domains = domain_entries({1: silent.port})
    agent = start(api_server, state_dir, "--timeout", "60", "--interval", "1h")
    agent.wait_for(lambda: len(silent.connections) == 1)
    agent.proc.send_signal(signal.SIGTERM)
    agent.wait_for(lambda: agent.events("stop"))
    time.sleep(SECOND_AFTER + 0.2)
    began = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(10) == 128 + signal.SIGTERM
    assert time.monotonic() - began < 3
    assert agent.events("exit_now")


def test_second_agent_on_the_state_dir_exits_3_and_a_stale_lock_is_taken_over(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, tls_target: Any
) -> None:
    """A second run on the same state dir exits 3 naming the holder's pid; after the holder
    is killed (SIGKILL, lock file left behind) a new run takes the lock over and cycles."""
    api_server.domains = domain_entries({1: tls_target.port})
    first = start(api_server, state_dir, "--interval", "1h")
    first.wait_for(lambda: first.events("cycle"))

    second = start(api_server, state_dir, "--interval", "1h")
    assert second.proc.wait(20) == 3
    assert f"pid {first.proc.pid}" in second.stderr.read_text()
    assert f"pid {first.proc.pid}" in second.output()
    assert len(api_server.posts("domains")) == 1, "the refused agent talked to the API"

    first.proc.kill()
    first.proc.wait()
    third = start(api_server, state_dir, "--interval", "1h")
    third.wait_for(lambda: third.events("cycle"))
    assert any(f"pid {first.proc.pid}" in r["message"] for r in third.records())
    assert third.stop(timeout=10)[0] == 0


def test_outage_is_retried_soon_without_shifting_the_schedule(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, tls_target: Any
) -> None:
    """When the domain list cannot be fetched the cycle is retried after 1 min, then 2
    (scaled by the test hook to 1 s, 2 s), and the next regular cycle still comes one
    interval after the first (10 min scaled to 10 s), not one interval after the retry."""
    api_server.domains = domain_entries({1: tls_target.port})
    api_server.script("domains", UNAUTHORIZED, UNAUTHORIZED)
    agent = start(api_server, state_dir, "--interval", "10m", scale=60)
    agent.wait_for(lambda: len(api_server.posts("domains")) >= 4, timeout=30)
    times = [r.at for r in api_server.posts("domains")]
    statuses = [r.status for r in api_server.posts("domains")]
    assert statuses[:4] == [401, 401, 200, 200]
    first, retry1, retry2, regular = times[:4]
    assert 0.9 <= retry1 - first <= 2.5
    assert 1.9 <= retry2 - retry1 <= 3.5
    # Interval + jitter (0.5 s), measured from the loop's start just before the first GET;
    # a schedule shifted by the retries would put it 13 s or more after the first.
    assert 9.0 <= regular - first <= 10.5 + 1.0
    outages = agent.events("cycle_outage")
    assert len(outages) == 2
    assert all(o["next_is_retry"] for o in outages)
    assert "401" in outages[0]["error"] or "token" in outages[0]["error"]
    assert api_server.posted_ids()[:1] == [1]
    assert agent.stop(timeout=10)[0] == 0


def test_interval_below_one_minute_is_refused() -> None:
    """--interval under 1 minute exits 3 before anything runs: the test hook does not
    lower the users' minimum."""
    env = {"TRACKSSL_AUTH_TOKEN": "t0ken-t0ken", "TRACKSSL_AGENT_TOKEN": "a", TIME_SCALE_VAR: "60"}
    result = CliRunner().invoke(cli, ["run", "--interval", "30s"], env=env)
    assert isinstance(result.exception, ConfigError)
    assert result.exception.exit_code == 3
    assert "at least 1 minute" in str(result.exception)


def test_run_without_tokens_exits_3_naming_them(tmp_path: Path) -> None:
    """run with no tokens configured exits 3 and names the missing keys."""
    done = subprocess.run(
        [*AGENT, "run"],
        env=agent_environ(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3
    assert "TRACKSSL_AUTH_TOKEN" in done.stderr


def test_run_without_tokens_points_at_check_once_for_local_mode(tmp_path: Path) -> None:
    """run without tokens says, in one line, where to set them and that local mode is
    ``check-once --targets FILE``: never ``--targets`` as if run had that option."""
    done = subprocess.run(
        [*AGENT, "run"], env=agent_environ(), cwd=tmp_path,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    [line] = done.stderr.splitlines()
    assert "TRACKSSL_AUTH_TOKEN and TRACKSSL_AGENT_TOKEN must be set in environment.txt" in line
    assert line.endswith(
        "without an account, check-once --targets FILE probes the targets of a file"
    )
    assert "use --targets" not in line


def test_ctrl_c_to_the_process_group_is_said_once(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, silent: Any
) -> None:
    """Ctrl-C on a terminal signals the whole process group, the agent and its cycle child
    alike: ``received SIGINT: stopping`` is logged once, and the agent exits 0."""
    api_server.domains = domain_entries({1: silent.port})
    # The probe in flight ends by its deadline after the stop: a short one.
    agent = start(api_server, state_dir, "--timeout", "5", "--interval", "1h", new_session=True)
    agent.wait_for(lambda: len(silent.connections) == 1)  # the cycle child is probing
    os.killpg(agent.proc.pid, signal.SIGINT)
    assert agent.proc.wait(30) == 0, agent.output()
    stops = [r for r in agent.records() if "received SIGINT: stopping" in r["message"]]
    assert len(stops) == 1, agent.output()


def test_state_dir_unusable_each_cycle_posts_directly_and_says_so(
    start: Callable[..., Agent], api_server: ApiServer, tmp_path: Path, tls_target: Any
) -> None:
    """A regular file in place of the state dir: run starts anyway (no lock), each cycle
    probes and posts directly and says so in one line naming the path and the fix; no
    internal error; SIGTERM exits 0 as usual."""
    state = tmp_path / "not-a-dir"
    state.write_text("x")
    api_server.domains = domain_entries({1: tls_target.port})
    agent = start(api_server, state, "--interval", "1m", scale=30)
    agent.wait_for(lambda: len(agent.events("cycle")) >= 2, timeout=30)
    assert api_server.posted_ids()[:2] == [1, 1]
    records = agent.records()
    said = [r for r in records if r.get("event") == "state_dir_unusable"]
    cycles = [r for r in records if r.get("event") == "cycle"]
    assert len(cycles) <= len(said) <= len(cycles) + 1  # one line per cycle (one may be running)
    assert all(str(state) in r["message"] and "TRACKSSL_STATE_DIR" in r["message"] for r in said)
    assert "without the lock" in said[0]["message"]
    assert "internal error" not in agent.output()
    assert "cycle_error" not in {r.get("event") for r in records}
    assert agent.stop(timeout=10)[0] == 0


def test_group_writable_state_dir_is_refused_at_start(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path
) -> None:
    """run refuses a state dir writable by group or others: exit 3 before any request."""
    state_dir.chmod(0o777)
    agent = start(api_server, state_dir, "--interval", "1h")
    assert agent.proc.wait(20) == 3
    assert f"chmod go-w {state_dir}" in agent.stderr.read_text()
    assert api_server.requests == []
