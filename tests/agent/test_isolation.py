"""``run``'s cycles in a child process (Linux): the fork itself in this process, then the
real agent (``python -m trackssl_agent run``) against the fake API on loopback."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import tls_servers
from tests.agent import test_run
from tests.agent.test_run import AGENT, Agent, agent_env
from tests.api_server import HANG, UNAUTHORIZED, ApiServer, domain_entries
from trackssl_agent import log
from trackssl_agent.agent import isolation, liveness
from trackssl_agent.agent.cycle_report import CycleReport
from trackssl_agent.agent.isolation import CycleProcess, CycleProcessError
from trackssl_agent.agent.scheduler import STALL_VAR
from trackssl_agent.agent.signals import SECOND_AFTER
from trackssl_agent.errors import ApiError, ExitCode
from trackssl_agent.state.cycle_state import StateDir

# test_run's fixtures: the agent process, a TLS target, a silent listener.
start = test_run.start
tls_target = test_run.tls_target
silent = test_run.silent

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="cycles fork on Linux only")

REPORT = CycleReport(
    domains=3, skipped=1, retrieved=2, failed={"refused": 1}, delivered=2, queued=1,
    rejected=0, backlog=0, elapsed_s=1.25, exit_code=ExitCode.WARNING, problem="API down",
)  # fmt: skip


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """Whether no process (not even a zombie) has ``pid``."""
    return not Path(f"/proc/{pid}").exists()


def one_child(agent: Agent) -> int:
    """The pid of the agent's cycle process, once there is one."""
    agent.wait_for(lambda: children(agent.proc.pid))
    (child,) = children(agent.proc.pid)
    return child


def test_linux_runs_cycles_in_a_child() -> None:
    """On Linux a cycle runner made without saying (as ``run`` makes it) runs the work in a
    forked child: the pid the work sees is another, and the child is gone afterwards."""
    read, write = os.pipe()

    def work(_stop: threading.Event) -> CycleReport:
        os.write(write, str(os.getpid()).encode())
        return REPORT

    try:
        assert CycleProcess(stop=threading.Event(), state=None).run(work) == REPORT
        worker = int(os.read(read, 64))
    finally:
        os.close(read)
        os.close(write)
    assert worker != os.getpid()
    assert gone(worker)


def test_a_report_comes_back_from_the_child() -> None:
    """The child's report reaches the caller figure for figure, from another pid, and the
    child is reaped (no zombie left)."""
    seen: list[int] = []
    cycles = CycleProcess(stop=threading.Event(), state=None)

    def work(_stop: threading.Event) -> CycleReport:
        seen.append(os.getpid())  # only the child's copy of the list gets it
        return REPORT

    assert cycles.run(work) == REPORT
    assert seen == []
    assert cycles.last_pid != os.getpid()
    assert gone(cycles.last_pid)
    assert cycles.child is None
    assert cycles.describe(REPORT).fields["cycle_pid"] == cycles.last_pid


def test_an_outage_in_the_child_is_an_api_error_here() -> None:
    """An ApiError in the child (domain list not fetched) is raised here as an ApiError
    with the same message, so the loop retries it as an outage."""

    def work(_stop: threading.Event) -> CycleReport:
        raise ApiError("the API refused the tokens (HTTP 401): check TRACKSSL_AUTH_TOKEN")

    with pytest.raises(ApiError, match=r"^the API refused the tokens \(HTTP 401\): check"):
        CycleProcess(stop=threading.Event(), state=None).run(work)


def test_any_other_failure_in_the_child_is_one_line_here() -> None:
    """Another exception in the child comes back as a CycleProcessError naming its type
    and message."""

    def work(_stop: threading.Event) -> CycleReport:
        raise KeyError("boom")

    with pytest.raises(CycleProcessError, match=r"^KeyError: 'boom'$"):
        CycleProcess(stop=threading.Event(), state=None).run(work)


def test_a_child_killed_without_a_report_is_named_by_its_signal() -> None:
    """A child that dies before it reports (SIGKILL) is a CycleProcessError naming the
    signal and the outbox, not a hang or a crash of the caller."""

    def work(_stop: threading.Event) -> CycleReport:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
        return REPORT

    with pytest.raises(CycleProcessError, match=r"was killed by SIGKILL before it reported.*"):
        CycleProcess(stop=threading.Event(), state=None).run(work)


def test_a_stop_here_is_passed_on_to_the_child() -> None:
    """Setting the caller's stop event sends the child a stop signal, which sets the
    child's own stop event: the cycle ends early and still reports."""
    stop = threading.Event()

    def work(child_stop: threading.Event) -> CycleReport:
        stopped = child_stop.wait(20)
        return CycleReport(
            domains=int(stopped), skipped=0, retrieved=0, failed={}, delivered=0, queued=0,
            rejected=0, backlog=0, elapsed_s=0.0, exit_code=ExitCode.OK,
        )  # fmt: skip

    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    report = CycleProcess(stop=stop, state=None).run(work)
    assert report.domains == 1
    assert time.monotonic() - began < 10  # without the stop the child waits 20 s


def test_a_child_without_progress_is_killed_after_the_stall_limit() -> None:
    """A child that stops making progress (here: sleeps, as a SIGSTOPped or deadlocked one
    would) is killed after the stall limit and reaped; the error says why."""
    pids: list[int] = []
    cycles = CycleProcess(stop=threading.Event(), state=None, stall=1.0)

    def work(_stop: threading.Event) -> CycleReport:
        time.sleep(60)
        return REPORT

    began = time.monotonic()
    with pytest.raises(CycleProcessError, match=r"showed no progress for 1s.*killed it.*outbox"):
        cycles.run(work)
    assert time.monotonic() - began < 10
    pids.append(cycles.last_pid)
    assert gone(pids[0])


def test_a_child_that_keeps_making_progress_is_never_killed() -> None:
    """Progress, not age, is what counts: a cycle that beats every 0.2 s for 3 s outlives a
    1 s stall limit and reports."""
    cycles = CycleProcess(stop=threading.Event(), state=None, stall=1.0)

    def work(_stop: threading.Event) -> CycleReport:
        for _ in range(15):
            time.sleep(0.2)
            liveness.beat()
        return REPORT

    assert cycles.run(work) == REPORT


def test_a_child_that_ignores_a_stop_is_killed_after_its_grace() -> None:
    """After a stop request the child has --timeout plus the grace; one that goes on (a
    stopped or hung child) is then killed, so the caller returns in bounded time."""
    stop = threading.Event()
    cycles = CycleProcess(stop=stop, state=None, timeout=1.0)

    def work(_stop: threading.Event) -> CycleReport:
        while True:  # ignores its stop event, and keeps beating: only the grace can end it
            time.sleep(0.1)
            liveness.beat()

    threading.Timer(0.3, stop.set).start()
    began = time.monotonic()
    with pytest.raises(CycleProcessError, match=r"had not stopped 4s after the stop request"):
        cycles.run(work)
    assert time.monotonic() - began < 1.0 + isolation.STOP_GRACE + 3
    assert gone(cycles.last_pid)


def test_a_line_said_once_by_a_child_is_not_said_again(state_dir: Path) -> None:
    """The once-said line about a lock that could not be taken, said by the first child
    (when it opened the outbox), counts as said in the agent too: later children do not
    repeat it every cycle."""
    with StateDir(state_dir) as state:
        state._trouble = (state_dir / "agent.lock", PermissionError(13, "Permission denied"))
        cycles = CycleProcess(stop=threading.Event(), state=state)

        def work(_stop: threading.Event) -> CycleReport:
            state.outbox().close()  # says the line, as a cycle's first step does
            return REPORT

        assert state.notice_pending
        cycles.run(work)
        assert not state.notice_pending


def test_without_isolation_the_cycle_runs_here() -> None:
    """With the switch off (macOS, Windows) the work runs in this process with the
    caller's stop event."""
    stop = threading.Event()
    got: list[threading.Event] = []

    def work(child_stop: threading.Event) -> CycleReport:
        got.append(child_stop)
        return REPORT

    cycles = CycleProcess(stop=stop, state=None, isolated=False)
    assert cycles.run(work) == REPORT
    assert got == [stop]
    assert cycles.last_pid == os.getpid()


def test_log_files_are_reopened_after_a_rotation_elsewhere(tmp_path: Path) -> None:
    """After another process renamed the log file (a rotation in the child), the next
    record goes to a new file at the configured path, not to the renamed one."""
    path = tmp_path / "agent.log"
    logger = log.setup_logging(file=path)
    try:
        logger.info("before")
        path.rename(tmp_path / "agent.log.1")
        log.reopen_log_files()
        logger.info("after")
        log.flush_logs()
        assert "after" in path.read_text()
        assert "after" not in (tmp_path / "agent.log.1").read_text()
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logging.getLogger(log.LOGGER_NAME).propagate = True


def test_each_cycle_runs_in_a_process_of_its_own(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, tls_target: Any
) -> None:
    """Each cycle line names the pid the cycle ran in: never the agent's, a new one each
    cycle, and gone (reaped) once the cycle is logged."""
    api_server.domains = domain_entries({1: tls_target.port})
    agent = start(api_server, state_dir, "--interval", "1m", scale=30)
    agent.wait_for(lambda: len(agent.events("cycle")) >= 2, timeout=30)
    pids = [c["cycle_pid"] for c in agent.events("cycle")[:2]]
    assert agent.proc.pid not in pids
    assert pids[0] != pids[1]
    assert gone(pids[0])
    assert api_server.posted_ids()[:2] == [1, 1]
    assert agent.stop(timeout=10)[0] == 0


def test_a_child_killed_mid_cycle_is_logged_and_the_next_cycle_delivers(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, tls_target: Any
) -> None:
    """SIGKILL to the cycle's process while its post hangs: the agent logs the failure
    naming the signal and goes on; the next cycle posts the result the killed one had
    stored in the outbox (as backlog) and the fresh one."""
    api_server.domains = domain_entries({1: tls_target.port})
    api_server.script("certificate", HANG)
    agent = start(api_server, state_dir, "--interval", "1m", scale=20)
    agent.wait_for(lambda: api_server.hung == 1)
    child = one_child(agent)
    os.kill(child, signal.SIGKILL)
    agent.wait_for(lambda: agent.events("cycle_error"))
    (error,) = agent.events("cycle_error")
    assert "was killed by SIGKILL" in error["message"]
    assert "outbox" in error["message"]
    agent.wait_for(lambda: agent.events("cycle"))
    (failed,) = agent.events("cycle")  # the killed cycle's line: no figures, the next run
    assert "delivered" not in failed
    agent.wait_for(lambda: len(agent.events("cycle")) == 2, timeout=20)
    cycle = agent.events("cycle")[1]
    assert cycle["delivered"] == 2  # the killed cycle's stored result and this one's
    assert cycle["queued"] == 0
    assert cycle["cycle_pid"] != child
    assert api_server.posted_ids() == [1, 1]
    assert gone(child)
    assert agent.stop(timeout=10)[0] == 0


def test_sigterm_to_the_agent_alone_stops_the_child_cleanly(
    start: Callable[..., Agent],
    api_server: ApiServer,
    state_dir: Path,
    tls_target: Any,
    silent: tls_servers.TcpServer,
) -> None:
    """SIGTERM to the agent's pid only (not its group) mid-cycle: the agent passes the stop
    on, the child ends its probes by their deadline and keeps the undelivered result in the
    outbox, the agent exits 0 and no child is left."""
    timeout = 3.0
    api_server.domains = domain_entries({1: tls_target.port, 2: silent.port})
    agent = start(api_server, state_dir, "--timeout", str(timeout), "--interval", "1h")
    agent.wait_for(lambda: api_server.posted_ids() == [1] and len(silent.connections) == 1)
    child = one_child(agent)
    code, took = agent.stop(timeout=timeout + 10)
    assert code == 0, agent.output()
    assert took < timeout + 5
    (cycle,) = agent.events("cycle")
    assert cycle["cycle_pid"] == child
    assert cycle["queued"] == 1
    assert cycle["message"].endswith("; stopping")
    assert "cycle_error" not in {r.get("event") for r in agent.records()}
    assert [p.name for p in (state_dir / "outbox").iterdir()]
    assert gone(child)


def test_two_sigterms_exit_at_once_and_kill_the_child(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, silent: Any
) -> None:
    """A second SIGTERM to the agent (past the copies window) while its child waits on a
    60 s probe: the agent exits at once with 128 + SIGTERM and leaves no child behind."""
    api_server.domains = domain_entries({1: silent.port})
    agent = start(api_server, state_dir, "--timeout", "60", "--interval", "1h")
    agent.wait_for(lambda: len(silent.connections) == 1)
    child = one_child(agent)
    agent.proc.send_signal(signal.SIGTERM)
    agent.wait_for(lambda: agent.events("stop"))
    time.sleep(SECOND_AFTER + 0.2)
    began = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(10) == 128 + signal.SIGTERM
    assert time.monotonic() - began < 8  # at once, where the probe would hold it 60 s
    assert agent.events("exit_now")
    assert gone(child), "the cycle's process outlived the agent"


def test_the_child_dies_with_a_killed_agent_and_frees_the_lock(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, silent: Any
) -> None:
    """SIGKILL to the agent mid-cycle takes its cycle's process along (it would hold the
    state-dir lock), so a new agent on the state dir starts at once."""
    api_server.domains = domain_entries({1: silent.port})
    first = start(api_server, state_dir, "--timeout", "60", "--interval", "1h")
    first.wait_for(lambda: len(silent.connections) == 1)
    child = one_child(first)
    first.proc.kill()
    first.proc.wait()
    end = time.monotonic() + 5
    while not gone(child) and time.monotonic() < end:
        time.sleep(0.05)
    assert gone(child), "the cycle's process outlived a killed agent"
    second = start(api_server, state_dir, "--timeout", "60", "--interval", "1h")
    second.wait_for(lambda: len(silent.connections) == 2)
    assert second.proc.poll() is None


def test_an_outage_in_the_child_is_retried_by_the_agent(
    start: Callable[..., Agent], api_server: ApiServer, state_dir: Path, tls_target: Any
) -> None:
    """A domain list refused in the child comes back as an outage: the agent logs its retry
    line (cycle_outage, next is a retry) and the retry delivers."""
    api_server.domains = domain_entries({1: tls_target.port})
    api_server.script("domains", UNAUTHORIZED)
    agent = start(api_server, state_dir, "--interval", "10m", scale=60)
    agent.wait_for(lambda: agent.events("cycle"), timeout=20)
    (outage,) = agent.events("cycle_outage")
    assert outage["next_is_retry"] is True
    assert "401" in outage["error"] or "token" in outage["error"]
    assert "cycle_error" not in {r.get("event") for r in agent.records()}
    assert api_server.posted_ids() == [1]
    assert agent.stop(timeout=10)[0] == 0


# -- a stopped or hung child (issue 18, finding 7) --------------------------------------------


def test_a_stopped_child_does_not_hold_up_the_stop(
    start: Callable[..., Agent],
    api_server: ApiServer,
    state_dir: Path,
    tls_target: Any,
    silent: tls_servers.TcpServer,
) -> None:
    """SIGSTOP to the cycle's process, then one SIGTERM to the agent: the agent kills the
    child after its grace, reaps it and exits 0 within --timeout plus a few seconds; the
    result the child had stored stays in the outbox and a later check-once delivers it."""
    timeout = 3.0
    api_server.domains = domain_entries({1: tls_target.port, 2: silent.port})
    api_server.fail("certificate", UNAUTHORIZED)  # result 1 stays stored, undelivered
    agent = start(api_server, state_dir, "--timeout", str(timeout), "--interval", "1h")
    agent.wait_for(lambda: api_server.posts("certificate") and len(silent.connections) == 1)
    child = one_child(agent)
    os.kill(child, signal.SIGSTOP)
    code, took = agent.stop(timeout=timeout + 20)
    assert code == 0, agent.output()
    assert took < timeout + 5
    assert gone(child)
    (error,) = agent.events("cycle_error")
    assert f"pid {child}" in error["message"]
    assert "had not stopped" in error["message"]
    assert "killed it" in error["message"]
    assert agent.events("stopped")

    api_server.clear()
    api_server.domains = []
    done = subprocess.run(
        [*AGENT, "check-once"], env=agent_env(api_server, state_dir, None),
        cwd=state_dir.parent, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert api_server.posted_ids() == [1]


def test_a_hung_cycle_is_killed_and_the_next_cycle_starts_at_once(
    start: Callable[..., Agent],
    api_server: ApiServer,
    state_dir: Path,
    tls_target: Any,
    silent: tls_servers.TcpServer,
) -> None:
    """A SIGSTOPped cycle's process (no progress) is killed after the stall limit (5 s by
    the test hook), logged, reaped; its slot having passed, the next cycle starts at once
    and re-sends the result the killed one had stored."""
    api_server.domains = domain_entries({1: tls_target.port, 2: silent.port})
    api_server.fail("certificate", UNAUTHORIZED)
    agent = start(
        api_server, state_dir, "--timeout", "2", "--interval", "1m", scale=20,
        **{STALL_VAR: "5"},
    )  # fmt: skip
    agent.wait_for(lambda: api_server.posts("certificate") and len(silent.connections) == 1)
    child = one_child(agent)
    os.kill(child, signal.SIGSTOP)
    api_server.clear()
    agent.wait_for(lambda: agent.events("cycle_error"), timeout=30)
    noticed = time.monotonic()
    (error,) = agent.events("cycle_error")
    assert f"pid {child}" in error["message"]
    assert "showed no progress for 5s" in error["message"]
    assert "killed it" in error["message"]
    assert gone(child)
    agent.wait_for(lambda: len(agent.events("cycle")) >= 2, timeout=30)
    fetches = api_server.posts("domains")
    assert fetches[1].at - noticed < 3  # the slot had passed: at once, not a slot later
    assert any("re-sending 1 results" in r["message"] for r in agent.records())
    assert 1 in api_server.posted_ids()
    second = agent.events("cycle")[1]
    assert second["delivered"] >= 1
    assert second["cycle_pid"] != child
    assert agent.stop(timeout=10)[0] == 0
