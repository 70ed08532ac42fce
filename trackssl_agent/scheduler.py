"""``run``: the loop that starts a cycle at once, then one every interval, never two at
once, and ``run_agent``, which holds the state-dir lock and the stop signals around it.

A ``schedule.Scheduler`` of its own dispatches the cycle, but the loop decides when the cycle
is due on a monotonic clock: schedule compares naive local ``datetime.now()`` values, so a
wall-clock step (NTP, DST, a resumed VM) would stall it or fire it early. The monotonic
clock, the wall clock (for log lines only), the sleep and the randomness are passed in, so
tests pass hours in milliseconds.

Test hook: the environment variable ``_TRACKSSL_TEST_TIME_SCALE=N`` divides the loop's
interval, jitter and retry delays by N, so end-to-end tests of the real process can use
``--interval 1m`` (the minimum users get) and see cycles seconds apart. It sits outside the
``TRACKSSL_`` namespace on purpose: it is not configuration, and ``run`` logs a warning
whenever it is in effect.
"""

from __future__ import annotations

import gc
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import schedule

from trackssl_agent import __version__, cycle
from trackssl_agent.api import ApiClient
from trackssl_agent.config import Config
from trackssl_agent.cycle import CycleReport
from trackssl_agent.errors import ApiError
from trackssl_agent.log import get_logger
from trackssl_agent.signals import stopping_on_signals

T = TypeVar("T")

RETRY_FIRST = 60.0
"""Seconds before the first retry of a cycle that could not fetch the domain list."""
JITTER_SHARE = 0.05
MAX_JITTER = 300.0
SLICE = 1.0
TIME_SCALE_VAR = "_TRACKSSL_TEST_TIME_SCALE"

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


@dataclass(frozen=True)
class Summary:
    """A log line's text and, for ``--log-format json``, its fields."""

    text: str
    fields: Mapping[str, object] = field(default_factory=dict)


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


def _no_summary(_result: object) -> Summary:
    return Summary("")


def run_loop(
    *,
    job: Callable[[], T],
    timing: Timing,
    stop: threading.Event,
    describe: Callable[[T], Summary] = _no_summary,
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
    scheduler = schedule.Scheduler()
    count = 0

    def cycle() -> None:
        nonlocal count
        count += 1
        started = clock()
        retry = plan.is_retry(started)
        failed: BaseException | None = None
        summary = Summary("")
        try:
            summary = describe(job())
        except outage as exc:
            failed = exc
        except Exception as exc:
            # schedule neither catches nor reschedules a job that raised: a daemon must go on.
            logger.error(
                "cycle %d failed: %s: %s; the loop goes on",
                count,
                type(exc).__name__,
                exc,
                extra={"fields": {"event": "cycle_error", "cycle": count}},
            )
            logger.debug("cycle %d traceback", count, exc_info=True)
        ended = clock()
        overran, skipped = plan.finished(ended=ended, regular=not retry, outage=failed is not None)
        _log_cycle(
            number=count,
            elapsed=ended - started,
            summary=summary,
            failed=failed,
            overran=overran,
            skipped=skipped,
            plan=plan,
            now=ended,
            wall=wall(),
            stopping=stop.is_set(),
        )
        # Per-target objects caught in reference cycles (tracebacks, sockets) would otherwise
        # wait for a later collection and keep the idle process larger than it needs to be.
        collect()

    handle = scheduler.every(max(1, round(timing.interval))).seconds.do(cycle)
    while not stop.is_set():
        left = plan.due() - clock()
        if left > 0:
            nap(min(left, timing.slice))
            continue
        # Due by the monotonic clock whatever the wall clock says: hand the job to schedule.
        handle.next_run = datetime.min
        scheduler.run_pending()
        handle.next_run = (wall() + timedelta(seconds=plan.due() - clock())).replace(tzinfo=None)
    return count


def _log_cycle(
    *,
    number: int,
    elapsed: float,
    summary: Summary,
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
    fields.update(summary.fields)
    head = f"cycle {number} done in {format_seconds(elapsed)}"
    if summary.text:
        head = f"{head}: {summary.text}"
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


def startup_summary(
    *, version: str, interval: float, url: str, agent_token: str, source: str
) -> Summary:
    """The line ``run`` logs when it starts: enough to tell which agent this is, no secret.

    Only the agent token's first characters are shown, and any user:password in the URL
    is dropped.
    """
    shown = agent_token[: 6 if len(agent_token) >= 12 else 2] + "..."
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    text = (
        f"trackssl-agent {version} starting: interval {format_seconds(interval)}, "
        f"API {url}, agent token {shown}, config {source}"
    )
    return Summary(
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


def cycle_summary(report: CycleReport) -> Summary:
    """The figures of one cycle for its summary line; JSON fields keep them as numbers."""
    failed = sum(report.failed.values())
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(report.failed.items()))
    text = (
        f"{report.domains} domains, {report.retrieved} retrieved, {failed} failed"
        + (f" ({kinds})" if kinds else "")
        + f", {report.delivered} delivered, {report.queued} queued"
    )
    if report.unsaved:
        text += f", {report.unsaved} not stored"
    if report.rejected:
        text += f", {report.rejected} rejected"
    if report.problem:
        text += f" (delivery stopped: {report.problem})"
    return Summary(
        text,
        {
            "domains": report.domains,
            "retrieved": report.retrieved,
            "failed": failed,
            "failed_by_kind": dict(report.failed),
            "delivered": report.delivered,
            "queued": report.queued,
            "rejected": report.rejected,
            "problem": report.problem,
            "unsaved": report.unsaved,
            "state_problem": report.state_problem,
        },
    )


def run_agent(conf: Config, *, family: socket.AddressFamily, environ: Mapping[str, str]) -> int:
    """``run``: hold the state-dir lock and run cycles until a stop signal; exit code 0.

    The lock is held for the whole run, not per cycle, so a second agent on the same
    state dir is refused at once rather than at its first cycle. Each cycle gets a fresh
    API session and outbox handle, so nothing per-target survives between cycles.
    """
    cycle.limit_malloc_arenas()
    api_settings = cycle.api_settings(conf)
    probe_settings = cycle.probe_settings(conf, family=family)
    scale = time_scale(environ)
    timing = Timing.for_interval(conf.interval, scale=scale)
    stop = threading.Event()

    def one_cycle() -> CycleReport:
        with ApiClient(api_settings, sleep=stop.wait, stop=stop) as client:
            return cycle.run_cycle(
                client=client,
                outbox=state.outbox(),
                settings=probe_settings,
                concurrency=conf.concurrency,
                stop=stop,
            )

    # The state dir is checked at start (exit 3 if unsafe or locked); when it cannot be
    # used, each cycle posts directly and says so.
    state = cycle.StateDir(conf.state_dir)
    # The stop signals are caught before the lock is taken, so a stop request during
    # start-up is a clean stop too (no KeyboardInterrupt, no death by SIGTERM).
    with stopping_on_signals(stop), state:
        start = startup_summary(
            version=__version__,
            interval=conf.interval,
            url=conf.url,
            agent_token=api_settings.agent_token,
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
        count = run_loop(job=one_cycle, timing=timing, stop=stop, describe=cycle_summary)
    logger.info(
        "stopped after %d cycle(s)", count, extra={"fields": {"event": "stopped", "cycles": count}}
    )
    return 0
