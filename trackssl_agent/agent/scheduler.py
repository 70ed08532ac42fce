"""``run``: the loop that starts a cycle at once, then one every interval, never two at
once, and ``run_agent``, which holds the state-dir lock and the stop signals around it.

A ``schedule.Scheduler`` of its own dispatches the cycle, but the loop decides when the cycle
is due on a monotonic clock: schedule compares naive local ``datetime.now()`` values, so a
wall-clock step (NTP, DST, a resumed VM) would stall it or fire it early. The monotonic
clock, the wall clock (for log lines only), the sleep and the randomness are passed in, so
tests pass hours in milliseconds.

Test hooks: the environment variable ``_TRACKSSL_TEST_TIME_SCALE=N`` divides the loop's
interval, jitter and retry delays by N, so end-to-end tests of the real process can use
``--interval 1m`` (the minimum users get) and see cycles seconds apart;
``_TRACKSSL_TEST_STALL=S`` kills a cycle's child after S seconds without progress instead of
``isolation.stall_limit`` (5 minutes and more), so a test sees a hung cycle killed. They sit
outside the ``TRACKSSL_`` namespace on purpose: they are not configuration, and ``run`` logs a
warning whenever one is in effect.
"""

from __future__ import annotations

import gc
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import schedule

from trackssl_agent import __version__
from trackssl_agent.agent import compose, isolation
from trackssl_agent.agent.cycle_report import CycleReport
from trackssl_agent.agent.memory import limit_malloc_arenas
from trackssl_agent.agent.signals import stopping_on_signals
from trackssl_agent.config.config import Config
from trackssl_agent.errors import ApiError, ExitCode
from trackssl_agent.log import LogLine, get_logger
from trackssl_agent.state.cycle_state import StateDir

T = TypeVar("T")

RETRY_FIRST = 60.0
"""Seconds before the first retry of a cycle that could not fetch the domain list."""
JITTER_SHARE = 0.05
MAX_JITTER = 300.0
SLICE = 1.0
TIME_SCALE_VAR = "_TRACKSSL_TEST_TIME_SCALE"
STALL_VAR = "_TRACKSSL_TEST_STALL"

logger = get_logger(__name__)


@dataclass(frozen=True)
class Timing:
    """When cycles run; every value in seconds."""

    interval: float
    """From the start of one regular cycle to the start of the next."""
    jitter: float = 0.0
    """Up to this much is added at random to each regular start after the first, so a fleet
    of agents started together does not reach the API in the same second."""
    retry: float = RETRY_FIRST
    """First delay before retrying a cycle whose domain list could not be fetched; it
    doubles on each failure up to ``interval``."""
    slice: float = SLICE
    """Longest single sleep: on Windows a wait is not interrupted by Ctrl-C."""

    @classmethod
    def for_interval(cls, interval: float, *, scale: float = 1.0) -> Timing:
        """The timing ``run`` uses: jitter of 5 % of the interval, at most 5 minutes; every
        value divided by the test hook's ``scale``."""
        jitter = min(interval * JITTER_SHARE, MAX_JITTER)
        return cls(
            interval=interval / scale,
            jitter=jitter / scale,
            retry=RETRY_FIRST / scale,
            slice=min(SLICE, interval / scale),
        )


def time_scale(environ: Mapping[str, str]) -> float:
    """The test hook's factor (``_TRACKSSL_TEST_TIME_SCALE``), 1 when unset or invalid."""
    try:
        value = float(environ.get(TIME_SCALE_VAR, "1"))
    except ValueError:
        return 1.0
    return value if 1.0 <= value <= 3600.0 else 1.0


def stall_override(environ: Mapping[str, str]) -> float | None:
    """The test hook's stall limit in seconds (``_TRACKSSL_TEST_STALL``, 1 to 3600); None
    when unset or invalid."""
    try:
        value = float(environ.get(STALL_VAR, ""))
    except ValueError:
        return None
    return value if 1.0 <= value <= 3600.0 else None


def format_seconds(seconds: float) -> str:
    """``4h``, ``1h30m``, ``90s`` -> ``1m30s``: a duration as an operator writes it."""
    total = round(seconds)
    if total < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{total}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _local_now() -> datetime:
    return datetime.now().astimezone()


class _Plan:
    """Where the regular schedule stands and whether a retry is pending (monotonic seconds)."""

    def __init__(self, timing: Timing, start: float, rng: random.Random) -> None:
        self.timing = timing
        self.anchor = start
        self.slot = 0
        self.regular_at = start
        self.retry_at: float | None = None
        self.failures = 0
        self.rng = rng

    def due(self) -> float:
        """When the next cycle starts."""
        if self.retry_at is None:
            return self.regular_at
        return min(self.regular_at, self.retry_at)

    def is_retry(self, now: float) -> bool:
        """Whether a cycle starting ``now`` is a retry rather than a regular slot."""
        return self.retry_at is not None and self.retry_at <= now < self.regular_at

    def finished(self, *, ended: float, regular: bool, outage: bool) -> tuple[bool, int]:
        """Plan the next cycle after one ended; returns whether the cycle ran past the next
        regular slot and how many slots were skipped.

        Regular slots stay on the grid ``anchor + k * interval`` so neither retries nor the
        cycle's own duration shift them. A slot that passed while a cycle ran starts at once
        when the cycle ends; slots wholly covered by a long cycle are skipped.
        """
        interval = self.timing.interval
        overran, skipped = False, 0
        if regular:
            self.slot += 1
            while self.anchor + (self.slot + 1) * interval <= ended:
                self.slot += 1
                skipped += 1
            base = self.anchor + self.slot * interval
            overran = base <= ended
            self.regular_at = ended if overran else base + self.rng.uniform(0, self.timing.jitter)
        if outage:
            self.failures += 1
            delay = min(self.timing.retry * 2 ** min(self.failures - 1, 32), interval)
            at = ended + delay
            # A regular slot that comes first is the retry.
            self.retry_at = at if at < self.regular_at else None
        else:
            self.failures = 0
            self.retry_at = None
        return overran, skipped


def _no_line(_result: object) -> LogLine:
    return LogLine("")


class _Cycles:
    """Runs the job once per call, as ``schedule`` dispatches it: times it, logs its line
    and plans the next one; a job that raises never ends the loop."""

    def __init__(
        self,
        *,
        job: Callable[[], T],
        describe: Callable[[T], LogLine],
        outage: tuple[type[BaseException], ...],
        plan: _Plan,
        stop: threading.Event,
        clock: Callable[[], float],
        wall: Callable[[], datetime],
        collect: Callable[[], object],
    ) -> None:
        self._run: Callable[[], LogLine] = lambda: describe(job())
        self._outage = outage
        self._plan = plan
        self._stop = stop
        self._clock = clock
        self._wall = wall
        self._collect = collect
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        started = self._clock()
        retry = self._plan.is_retry(started)
        failed: BaseException | None = None
        line = LogLine("")
        try:
            line = self._run()
        except self._outage as exc:
            failed = exc
        except Exception as exc:
            # schedule neither catches nor reschedules a job that raised: a daemon must go on.
            logger.error(
                "cycle %d failed: %s: %s; the loop goes on",
                self.count, type(exc).__name__, exc,
                extra={"fields": {"event": "cycle_error", "cycle": self.count}},
            )  # fmt: skip
            logger.debug("cycle %d traceback", self.count, exc_info=True)
        ended = self._clock()
        overran, skipped = self._plan.finished(
            ended=ended, regular=not retry, outage=failed is not None
        )
        _log_cycle(
            number=self.count, elapsed=ended - started, line=line, failed=failed,
            overran=overran, skipped=skipped, plan=self._plan, now=ended, wall=self._wall(),
            stopping=self._stop.is_set(),
        )  # fmt: skip
        # Per-target objects caught in reference cycles (tracebacks, sockets) would otherwise
        # wait for a later collection and keep the idle process larger than it needs to be.
        self._collect()


def run_loop(
    *,
    job: Callable[[], T],
    timing: Timing,
    stop: threading.Event,
    describe: Callable[[T], LogLine] = _no_line,
    outage: tuple[type[BaseException], ...] = (ApiError,),
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], datetime] = _local_now,
    sleep: Callable[[float], object] | None = None,
    rng: random.Random | None = None,
    collect: Callable[[], object] = gc.collect,
) -> int:
    """Run ``job`` at once, then every ``timing.interval`` until ``stop`` is set.

    A job that raises is logged and the loop goes on; one that raises an ``outage``
    exception (the domain list could not be fetched) is retried after ``timing.retry``,
    then with backoff up to the interval. Returns the number of cycles run.
    """
    nap: Callable[[float], object] = sleep or stop.wait
    plan = _Plan(timing, clock(), rng or random.Random())  # noqa: S311 - jitter, not a secret
    cycles = _Cycles(
        job=job, describe=describe, outage=outage, plan=plan, stop=stop, clock=clock,
        wall=wall, collect=collect,
    )  # fmt: skip
    scheduler = schedule.Scheduler()
    handle = scheduler.every(max(1, round(timing.interval))).seconds.do(cycles)
    while not stop.is_set():
        left = plan.due() - clock()
        if left > 0:
            nap(min(left, timing.slice))
            continue
        # Due by the monotonic clock whatever the wall clock says: hand the job to schedule.
        handle.next_run = datetime.min
        scheduler.run_pending()
        handle.next_run = (wall() + timedelta(seconds=plan.due() - clock())).replace(tzinfo=None)
    return cycles.count


def _log_cycle(
    *,
    number: int,
    elapsed: float,
    line: LogLine,
    failed: BaseException | None,
    overran: bool,
    skipped: int,
    plan: _Plan,
    now: float,
    wall: datetime,
    stopping: bool,
) -> None:
    """One summary line per cycle, ending with when the next one runs."""
    fields: dict[str, object] = {"event": "cycle", "cycle": number, "duration_s": round(elapsed, 3)}
    fields.update(line.fields)
    head = f"cycle {number} done in {format_seconds(elapsed)}"
    if line.text:
        head = f"{head}: {line.text}"
    if failed is not None:
        took = format_seconds(elapsed)
        head = f"cycle {number} could not fetch the domain list after {took}: {failed}"
        fields["event"] = "cycle_outage"
        fields["error"] = str(failed)
    if stopping:
        logger.info("%s; stopping", head, extra={"fields": fields})
        return
    left = max(0.0, plan.due() - now)
    at = (wall + timedelta(seconds=left)).isoformat(timespec="seconds")
    what = "retry" if plan.retry_at is not None and plan.due() == plan.retry_at else "next run"
    fields["next_run"] = at
    fields["next_is_retry"] = what == "retry"
    if overran:
        logger.warning(
            "cycle %d took %s, longer than the interval %s; %d slot(s) skipped, the next starts "
            "at once: raise --interval or --concurrency",
            number,
            format_seconds(elapsed),
            format_seconds(plan.timing.interval),
            skipped,
            extra={"fields": {"event": "overrun", "cycle": number, "skipped": skipped}},
        )
    level = logger.warning if failed is not None else logger.info
    level("%s; %s at %s (in %s)", head, what, at, format_seconds(left), extra={"fields": fields})


def startup_line(
    *, version: str, interval: float, url: str, agent_token: str, source: str
) -> LogLine:
    """The line ``run`` logs when it starts: enough to tell which agent this is, no secret.

    Only the agent token's first characters are shown. The URL holds no user:password:
    config refuses one (``TRACKSSL_API_URL``'s check).
    """
    shown = agent_token[: 6 if len(agent_token) >= 12 else 2] + "..."
    text = (
        f"trackssl-agent {version} starting: interval {format_seconds(interval)}, "
        f"API {url}, agent token {shown}, config {source}"
    )
    return LogLine(
        text,
        {
            "event": "start",
            "version": version,
            "interval_s": interval,
            "url": url,
            "agent_token": shown,
            "config": source,
        },
    )


def run_agent(conf: Config, *, family: socket.AddressFamily, environ: Mapping[str, str]) -> int:
    """``run``: hold the state-dir lock and run cycles until a stop signal; exit code 0.

    The lock is held for the whole run, not per cycle, so a second agent on the same
    state dir is refused at once rather than at its first cycle. Each cycle gets a fresh
    API session and outbox handle, so nothing per-target survives between cycles; on
    Linux each cycle runs in a child process (``isolation``), so nothing at all does.
    """
    limit_malloc_arenas()
    agent_token = compose.api_settings(conf).agent_token  # ConfigError before anything starts
    scale = time_scale(environ)
    timing = Timing.for_interval(conf.interval, scale=scale)
    stop = threading.Event()

    def work(cycle_stop: threading.Event) -> CycleReport:
        return compose.api_cycle(conf, state=state, stop=cycle_stop, family=family)

    # The state dir is checked at start (exit 3 if unsafe or locked); when it cannot be
    # used, each cycle posts directly and says so.
    state = StateDir(conf.state_dir)
    stall = stall_override(environ)
    # A child that hangs or was stopped is killed: after --timeout plus a grace once a stop
    # was asked for, or after the stall limit without progress (``isolation``).
    cycles = isolation.CycleProcess(stop=stop, state=state, timeout=conf.timeout, stall=stall)
    # The stop signals are caught before the lock is taken, so a stop request during
    # start-up is a clean stop too (no KeyboardInterrupt, no death by SIGTERM). Exiting
    # at once kills a running cycle's child first.
    with stopping_on_signals(stop, exit_now=cycles.exit_now), state:
        start = startup_line(
            version=__version__,
            interval=conf.interval,
            url=conf.url,
            agent_token=agent_token,
            source=str(conf.file) if conf.file else "none (environment and defaults)",
        )
        logger.info("%s", start.text, extra={"fields": dict(start.fields)})
        if scale != 1:
            logger.warning(
                "%s=%g is set: every interval and retry delay is divided by %g; a test hook, "
                "not for production",
                TIME_SCALE_VAR,
                scale,
                scale,
            )
        if stall is not None:
            logger.warning(
                "%s=%g is set: a cycle without progress for %gs is killed; a test hook, not "
                "for production",
                STALL_VAR,
                stall,
                stall,
            )
        count = run_loop(
            job=lambda: cycles.run(work), timing=timing, stop=stop, describe=cycles.describe
        )
    logger.info(
        "stopped after %d cycle(s)", count, extra={"fields": {"event": "stopped", "cycles": count}}
    )
    return ExitCode.OK
