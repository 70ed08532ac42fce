"""The run loop driven by an injected clock and sleep: hours of schedule in milliseconds."""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schedule

from trackssl_agent.agent import scheduler
from trackssl_agent.agent.scheduler import Timing, format_seconds, run_loop, startup_line
from trackssl_agent.agent.signals import (
    SECOND_AFTER,
    StopRequests,
    Verdict,
    stop_signals,
    stopping_on_signals,
)
from trackssl_agent.config.settings import check_url
from trackssl_agent.errors import ApiError
from trackssl_agent.log import LogLine, setup_logging

HOUR = 3600.0
T0 = 1000.0


@dataclass
class FakeTime:
    """A monotonic clock and a wall clock that only move when the loop sleeps or works."""

    now: float = T0
    wall_offset: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        """Monotonic seconds."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Pass time instantly."""
        assert seconds > 0, "the loop must never spin with a zero sleep"
        self.sleeps.append(seconds)
        self.now += seconds

    def wall(self) -> dt.datetime:
        """Local wall time, which an operator or NTP may step."""
        base = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
        return base + dt.timedelta(seconds=self.now - T0 + self.wall_offset)


@dataclass
class Recorder:
    """A job that takes simulated time and records when it ran."""

    time: FakeTime
    stop: threading.Event
    limit: int
    duration: Callable[[int], float] = lambda _n: 60.0
    fail: Callable[[int], BaseException | None] = lambda _n: None
    runs: list[tuple[float, float]] = field(default_factory=list)
    running: bool = False

    def __call__(self) -> int:
        assert not self.running, "two cycles overlap"
        self.running = True
        number = len(self.runs) + 1
        start = self.time.now
        self.time.now += self.duration(number)
        self.runs.append((start, self.time.now))
        self.running = False
        if number >= self.limit:
            self.stop.set()
        error = self.fail(number)
        if error is not None:
            raise error
        return number


def loop(fake: FakeTime, job: Recorder, timing: Timing, *, seed: int = 1, **kwargs: object) -> int:
    """run_loop on the fake clock."""
    return run_loop(
        job=job,
        timing=timing,
        stop=job.stop,
        clock=fake.clock,
        wall=fake.wall,
        sleep=fake.sleep,
        rng=random.Random(seed),  # noqa: S311 - reproducible jitter
        collect=lambda: None,
        **kwargs,  # type: ignore[arg-type]
    )


def test_first_cycle_at_once_then_every_interval() -> None:
    """The first cycle starts at once, later ones on the interval grid, none early."""
    fake = FakeTime()
    job = Recorder(fake, threading.Event(), limit=5)
    assert loop(fake, job, Timing(interval=4 * HOUR, slice=600)) == 5
    starts = [start for start, _ in job.runs]
    assert starts == [T0 + k * 4 * HOUR for k in range(5)]


def test_200_cycles_no_overlap_no_unplanned_skip_and_raising_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over 200 cycles with jitter, overruns and a job raising every third time, the loop
    never overlaps cycles, keeps the grid, and skips only slots a long cycle covered."""
    interval, jitter = 4 * HOUR, 300.0
    rng = random.Random(7)  # noqa: S311 - reproducible durations

    def duration(number: int) -> float:
        if number % 17 == 0:
            return 1.5 * interval
        if number % 41 == 0:
            return 3.2 * interval
        return rng.uniform(1, 0.3 * interval)

    fake = FakeTime()
    job = Recorder(
        fake,
        threading.Event(),
        limit=200,
        duration=duration,
        fail=lambda n: RuntimeError(f"boom {n}") if n % 3 == 0 else None,
    )
    with caplog.at_level(logging.INFO, logger="trackssl_agent"):
        count = loop(fake, job, Timing(interval=interval, jitter=jitter, slice=900))
    assert count == 200
    assert len(job.runs) == 200
    slots: list[int] = []
    for index, (start, _end) in enumerate(job.runs):
        slot = int((start - T0) // interval)
        offset = start - (T0 + slot * interval)
        if index:
            prev_end = job.runs[index - 1][1]
            assert start >= prev_end, f"cycle {index + 1} overlaps"
            if prev_end > T0 + slot * interval:
                assert start == prev_end, "a slot passed during a cycle starts at once"
            else:
                assert 0 <= offset <= jitter, "a regular start is its slot plus jitter"
            # Only slots wholly inside the previous cycle may be skipped.
            for missing in range(slots[-1] + 1, slot):
                assert T0 + (missing + 1) * interval <= prev_end
        slots.append(slot)
    assert slots == sorted(set(slots))
    skipped = slots[-1] + 1 - len(slots)
    assert skipped == sum(2 for n in range(1, 200) if n % 41 == 0 and n % 17 != 0)
    assert sum("failed: RuntimeError: boom" in r.getMessage() for r in caplog.records) == 66
    assert max(fake.sleeps) <= 900


def test_outage_retried_after_a_minute_with_backoff_without_shifting_the_schedule() -> None:
    """A cycle that cannot fetch the domain list is retried after 1 min, 2, 4... capped by
    the interval, and the regular slots stay where they were."""
    interval = 4 * HOUR
    outage = set(range(2, 12))  # cycle 1 fine; 2 (regular) to 11 fail; 12 works

    fake = FakeTime()
    job = Recorder(
        fake,
        threading.Event(),
        limit=14,
        duration=lambda _n: 5.0,
        fail=lambda n: ApiError("503 from domains.json") if n in outage else None,
    )
    loop(fake, job, Timing(interval=interval, jitter=0, slice=600))
    starts = [start for start, _ in job.runs]
    ends = [end for _, end in job.runs]
    assert starts[1] == T0 + interval
    gaps = [starts[n] - ends[n - 1] for n in range(2, 9)]
    assert gaps == [60, 120, 240, 480, 960, 1920, 3840]
    # The next retry (7680 s) would come after the regular slot: the slot is the retry.
    assert starts[9] == T0 + 2 * interval
    # From there the delay is capped by the interval, which falls on the next regular slot:
    # no more retries; cycle 12 works, and the grid never moved.
    assert starts[10:] == [T0 + k * interval for k in range(3, 7)]


def test_retry_after_outage_then_regular_slot_unshifted_with_jitter() -> None:
    """After one failed regular cycle and a successful retry, the next regular cycle is on
    its slot (plus jitter), not one interval after the retry."""
    interval, jitter = HOUR, 180.0
    fake = FakeTime()
    job = Recorder(
        fake,
        threading.Event(),
        limit=4,
        duration=lambda _n: 2.0,
        fail=lambda n: ApiError("down") if n == 2 else None,
    )
    loop(fake, job, Timing(interval=interval, jitter=jitter, slice=600), seed=3)
    (_, _), (s2, e2), (s3, _), (s4, _) = job.runs
    assert 0 <= s2 - (T0 + interval) <= jitter
    assert s3 == e2 + 60
    assert 0 <= s4 - (T0 + 2 * interval) <= jitter


def test_wall_clock_jumps_neither_stall_nor_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps of the wall clock seen by schedule and the loop (+1 day, then -2 days) leave
    the cycles exactly one interval apart on the monotonic clock."""
    fake = FakeTime()

    class SteppedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> SteppedDatetime:
            wall = fake.wall()
            value = wall.astimezone(tz) if tz else wall.replace(tzinfo=None)
            return cls.fromisoformat(value.isoformat())

    stepped = types.SimpleNamespace(
        datetime=SteppedDatetime, timedelta=dt.timedelta, time=dt.time, date=dt.date
    )
    monkeypatch.setattr(schedule, "datetime", stepped)
    interval = HOUR

    def duration(number: int) -> float:
        if number == 3:
            fake.wall_offset += 86400
        if number == 6:
            fake.wall_offset -= 2 * 86400
        return 10.0

    job = Recorder(fake, threading.Event(), limit=10, duration=duration)
    loop(fake, job, Timing(interval=interval, jitter=0, slice=600))
    starts = [start for start, _ in job.runs]
    assert starts == [T0 + k * interval for k in range(10)]


def test_sleep_is_sliced_and_a_stop_wakes_the_real_sleep_at_once() -> None:
    """Sleeps never exceed the slice, and with the real sleep a stop ends a one-hour wait
    at once."""
    fake = FakeTime()
    job = Recorder(fake, threading.Event(), limit=2)
    loop(fake, job, Timing(interval=HOUR, slice=1.0))
    assert max(fake.sleeps) <= 1.0

    stop = threading.Event()
    ran = threading.Event()

    def once() -> None:
        ran.set()

    thread = threading.Thread(
        target=run_loop, kwargs={"job": once, "timing": Timing(interval=HOUR), "stop": stop}
    )
    thread.start()
    assert ran.wait(5)
    time.sleep(0.1)
    began = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - began < 3  # at once, where the next run is an hour away


def test_summary_line_has_the_report_and_next_run(caplog: pytest.LogCaptureFixture) -> None:
    """Each cycle logs one line with the job's summary and the wall time of the next run."""
    fake = FakeTime()
    job = Recorder(fake, threading.Event(), limit=2, duration=lambda _n: 90.0)
    with caplog.at_level(logging.INFO, logger="trackssl_agent"):
        loop(
            fake,
            job,
            Timing(interval=HOUR, slice=600),
            describe=lambda n: LogLine(f"{n} domains", {"domains": n}),
        )
    first = next(r for r in caplog.records if r.getMessage().startswith("cycle 1 "))
    assert first.getMessage() == (
        "cycle 1 done in 1m30s: 1 domains; next run at 2026-11-27T13:00:00+00:00 (in 58m30s)"
    )
    assert first.fields["domains"] == 1  # type: ignore[attr-defined]
    assert first.fields["next_run"] == "2026-11-27T13:00:00+00:00"  # type: ignore[attr-defined]
    last = next(r for r in caplog.records if r.getMessage().startswith("cycle 2 "))
    assert last.getMessage().endswith("; stopping")


def test_overrun_warns_and_names_skipped_slots(caplog: pytest.LogCaptureFixture) -> None:
    """A cycle longer than two intervals logs a warning saying slots were skipped."""
    fake = FakeTime()
    job = Recorder(fake, threading.Event(), limit=3, duration=lambda n: 2.5 * HOUR if n == 1 else 1)
    with caplog.at_level(logging.INFO, logger="trackssl_agent"):
        loop(fake, job, Timing(interval=HOUR, slice=600))
    assert job.runs[1][0] == job.runs[0][1]
    assert job.runs[2][0] == T0 + 3 * HOUR
    assert any("1 slot(s) skipped" in r.getMessage() for r in caplog.records)


def test_startup_line_shows_no_token_and_config_refuses_a_url_password() -> None:
    """The start-up line names version, interval, URL and config but only the agent
    token's first characters; a URL that could carry a password never reaches it, because
    config refuses user-info without repeating the URL."""
    summary = startup_line(
        version="1.2.3",
        interval=4 * HOUR,
        url="https://api.example.test/base",
        agent_token="agt_0123456789abcdef",  # noqa: S106 - a made-up token
        source="/etc/trackssl/environment.txt",
    )
    assert summary.text == (
        "trackssl-agent 1.2.3 starting: interval 4h, API https://api.example.test/base, "
        "agent token agt_01..., config /etc/trackssl/environment.txt"
    )
    assert "0123456789abcdef" not in str(summary.fields)
    with pytest.raises(ValueError, match="without user") as refused:
        check_url("https://user:hunter2@api.example.test/base")
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(4 * HOUR, "4h"), (5400, "1h30m"), (90, "1m30s"), (2.25, "2.2s")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    """Durations read as an operator writes them."""
    assert format_seconds(seconds) == text


def test_jitter_is_small_and_bounded() -> None:
    """run's jitter is 5 % of the interval, never more than 5 minutes."""
    assert Timing.for_interval(60).jitter == 3
    assert Timing.for_interval(4 * HOUR).jitter == scheduler.MAX_JITTER


def test_time_scale_hook_shortens_every_delay_and_only_when_valid() -> None:
    """The hidden test hook divides interval, jitter and retry; junk leaves real timing."""
    scale = scheduler.time_scale({scheduler.TIME_SCALE_VAR: "60"})
    assert Timing.for_interval(120, scale=scale) == Timing(interval=2, jitter=0.1, retry=1, slice=1)
    for junk in ("", "fast", "0", "0.5", "-3", "nan"):
        assert scheduler.time_scale({scheduler.TIME_SCALE_VAR: junk}) == 1
    assert scheduler.time_scale({}) == 1


@pytest.fixture
def stop_handlers() -> Iterator[None]:
    """Puts the stop signals' handlers back after a test that left them ignored."""
    before = {sig: signal.getsignal(sig) for sig in stop_signals()}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_copies_within_the_window_are_one_request_a_later_signal_exits() -> None:
    """A signal microseconds after the first is the same stop; one 2 s or more later exits."""
    requests = StopRequests()
    assert requests.receive(100.0) is Verdict.STOP
    assert requests.receive(100.000001) is Verdict.SAME
    assert requests.receive(100.0 + SECOND_AFTER - 0.01) is Verdict.SAME
    assert requests.receive(100.0 + SECOND_AFTER) is Verdict.EXIT


def _signal_twice() -> list[int]:
    """SIGTERM, then another past a 0.3 s window; the codes the immediate exit got."""
    stop = threading.Event()
    exited = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    with stopping_on_signals(stop, exit_now=fake_exit, second_after=0.3):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2)
        assert not exited.is_set()
        time.sleep(0.4)
        os.kill(os.getpid(), signal.SIGTERM)
        assert exited.wait(2)
    return codes


@pytest.mark.usefixtures("stop_handlers")
def test_a_broken_log_stream_does_not_prevent_the_exit_now(tmp_path: Path) -> None:
    """With the log's stream closed (stderr gone, say), a second signal still exits."""
    broken = (tmp_path / "stderr").open("w")  # a closed file refuses flush(), as stderr would
    setup_logging(stream=broken)
    broken.close()
    assert _signal_twice() == [128 + signal.SIGTERM]


@pytest.mark.usefixtures("stop_handlers")
def test_first_signal_sets_stop_a_later_one_exits_at_once() -> None:
    """SIGTERM sets the stop event; another one after the window calls the immediate exit
    with 128+signum."""
    assert _signal_twice() == [128 + signal.SIGTERM]


@pytest.mark.usefixtures("stop_handlers")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_two_signals_microseconds_apart_are_one_stop(signum: int) -> None:
    """The group's copy and the bootloader's forwarded copy, back to back, stop once and
    never exit at once, nor raise KeyboardInterrupt."""
    stop = threading.Event()
    codes: list[int] = []
    with stopping_on_signals(stop, exit_now=codes.append):
        os.kill(os.getpid(), signum)
        os.kill(os.getpid(), signum)
        assert stop.wait(2)
        time.sleep(0.5)  # the watcher has long seen both by now
    assert codes == []


@pytest.mark.usefixtures("stop_handlers")
@pytest.mark.timeout(20)
def test_signal_while_the_main_thread_holds_the_stop_events_lock() -> None:
    """A signal handled while the main thread is inside ``stop.wait()`` (holding the
    event's Condition lock) neither deadlocks nor is lost: the stop arrives once it lets go."""
    stop = threading.Event()
    # The event's own lock, taken as Event.wait() takes it; a handler calling stop.set()
    # here would block forever on a lock its own thread holds.
    held: threading.Condition = vars(stop)["_cond"]
    with stopping_on_signals(stop), held:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(20):  # give the Python-level handler its chance to run in here
            time.sleep(0.01)
    assert stop.wait(2)


@pytest.mark.usefixtures("stop_handlers")
def test_handlers_come_back_without_a_stop_and_stay_ignored_after_one() -> None:
    """Leaving without a signal restores the handlers; leaving after one keeps the stop
    signals ignored, so a late copy cannot kill the process while it finishes."""
    before = signal.getsignal(signal.SIGINT)
    with stopping_on_signals(threading.Event()):
        pass
    assert signal.getsignal(signal.SIGINT) == before
    stop = threading.Event()
    with stopping_on_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(2)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGINT)  # a late copy: nothing happens
