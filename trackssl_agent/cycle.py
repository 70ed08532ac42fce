"""One cycle: fetch the domain list, probe all concurrently, post each result as it
completes through the outbox, and summarise. Also the pieces ``check-once`` and ``run``
share: API settings from a Config, and the state dir (lock and outbox) that a cycle runs
with, or without when it cannot be used.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from trackssl_agent import api, log
from trackssl_agent.api import ApiClient, ApiSettings, AuthError, Domain, RejectedError
from trackssl_agent.config import Config
from trackssl_agent.errors import ApiError, StateDirError
from trackssl_agent.lock import StateLock
from trackssl_agent.outbox import Outbox, Record
from trackssl_agent.probe import ProbeSettings, probe_many
from trackssl_agent.report import ExitCode
from trackssl_agent.results import ProbeResult, utc_iso
from trackssl_agent.statedir import Folder, explain, open_folder
from trackssl_agent.targets import Target

logger = log.get_logger(__name__)

Progress = Callable[[int, int, int], None]
"""``progress(done, total, failed)`` after each probe."""

POSTERS = 4
"""Concurrent posts: enough to keep up with probing, gentle on the API."""
_BATCH = 256


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did."""

    domains: int
    """Domains in the list (after skipping bad entries)."""
    skipped: int
    """Bad entries of the domain list."""
    retrieved: int
    """Targets whose chain was retrieved."""
    failed: Mapping[str, int]
    """Targets not probed, by error kind."""
    delivered: int
    """Results the API accepted, earlier cycles' included."""
    queued: int
    """Results left in the outbox for the next cycle."""
    rejected: int
    """Results the API refused for good (dropped)."""
    backlog: int
    """Results from earlier cycles found in the outbox at the start."""
    elapsed_s: float
    exit_code: ExitCode
    problem: str | None = None
    """Why delivery stopped early (API down, auth rejected), if it did."""
    state_problem: str | None = None
    """Why results were not stored in the state dir this cycle (said once in the log)."""
    unsaved: int = 0
    """Results neither delivered nor stored (the state dir failed): probed again next cycle."""
    results: tuple[ProbeResult, ...] = field(default=(), repr=False)
    """The results in domain-list order, when asked to keep them."""

    def summary(self) -> str:
        """One line for people and logs."""
        failed = sum(self.failed.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.failed.items()))
        parts = [
            f"domains {self.domains}",
            f"retrieved {self.retrieved}",
            f"failed {failed}" + (f" ({kinds})" if kinds else ""),
            f"delivered {self.delivered}",
            f"queued {self.queued}",
        ]
        if self.unsaved:
            parts.append(f"not stored {self.unsaved}")
        if self.rejected:
            parts.append(f"rejected {self.rejected}")
        if self.skipped:
            parts.append(f"skipped entries {self.skipped}")
        return ", ".join(parts) + f", elapsed {self.elapsed_s:.1f} s"


def api_settings(config: Config) -> ApiSettings:
    """The API connection a Config describes; ConfigError when a token is missing."""
    auth, agent = config.require_api()
    return ApiSettings(
        url=config.url, auth_token=auth, agent_token=agent, ca_bundle=config.ca_bundle
    )


def probe_settings(config: Config, *, family: socket.AddressFamily) -> ProbeSettings:
    """Per-target probe settings from a Config (``family`` is the ``-4``/``-6`` choice)."""
    return ProbeSettings(timeout=config.timeout, family=family, allow=config.allow)


class _Delivery:
    """Poster threads: FIFO, one post at a time per domain, stopping for good when the
    API turns out to be down or the tokens wrong (the rest waits in the outbox).

    The backlog of earlier cycles is delivered before any new result is posted, so the API
    sees old results first even though several posts run at once."""

    def __init__(
        self, *, client: ApiClient, outbox: Outbox, workers: int, stop: threading.Event
    ) -> None:
        self._client = client
        self._outbox = outbox
        self._stop = stop
        self._cond = threading.Condition()
        self._queue: deque[Record] = deque()
        self._in_flight: set[int] = set()
        self._backlog: set[int] = set()
        """``id()`` of backlog records not yet delivered or given up."""
        self._closed = False
        self.delivered = 0
        self.rejected = 0
        self.failure: ApiError | None = None
        self._threads = [
            threading.Thread(target=self._work, name=f"post-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def put(self, records: Sequence[Record], *, backlog: bool = False) -> None:
        with self._cond:
            self._queue.extend(records)
            if backlog:
                self._backlog.update(id(record) for record in records)
            self._cond.notify_all()

    def finish(self) -> None:
        """No more records; wait until every queued post is done or given up."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _halted(self) -> bool:
        return self.failure is not None or self._stop.is_set()

    def _take(self) -> Record | None:
        with self._cond:
            while True:
                if self._halted():
                    return None
                index = 0
                while index < len(self._queue):
                    record = self._queue[index]
                    if not self._outbox.is_current(record):
                        del self._queue[index]  # replaced by a newer result: skip it
                        self._backlog.discard(id(record))
                    elif self._backlog and id(record) not in self._backlog:
                        index += 1  # new results wait until the backlog is through
                    elif record.domain_id in self._in_flight:
                        index += 1  # its older result is being posted: keep the order
                    else:
                        del self._queue[index]
                        self._in_flight.add(record.domain_id)
                        return record
                if self._closed and not self._queue:
                    return None
                self._cond.wait(0.5)

    def _work(self) -> None:
        while (record := self._take()) is not None:
            try:
                self._client.post(record.payload)
            except RejectedError as exc:
                logger.warning("%s; dropped from the outbox", exc)
                self._outbox.done(record)
                with self._cond:
                    self.rejected += 1
            except ApiError as exc:
                with self._cond:
                    if self.failure is None:
                        self.failure = exc
                        kind = "rejected the tokens" if isinstance(exc, AuthError) else "failed"
                        logger.error("delivery %s, the rest waits in the outbox: %s", kind, exc)
            except Exception as exc:  # a bug must not lose the result: it stays queued
                logger.exception("posting domain_id %d failed unexpectedly", record.domain_id)
                with self._cond:
                    if self.failure is None:
                        self.failure = ApiError(f"unexpected error while posting: {exc}")
            else:
                self._outbox.done(record)
                with self._cond:
                    self.delivered += 1
            finally:
                with self._cond:
                    self._in_flight.discard(record.domain_id)
                    self._backlog.discard(id(record))
                    self._cond.notify_all()


def _probe_into(
    targets: Sequence[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    stop: threading.Event,
    sink: queue.Queue[tuple[int, ProbeResult] | None],
) -> None:
    try:
        for item in probe_many(targets, settings, concurrency=concurrency, stop=stop):
            sink.put(item)
    finally:
        sink.put(None)


def probe_stream(
    targets: Sequence[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    stop: threading.Event,
) -> queue.Queue[tuple[int, ProbeResult] | None]:
    """Probe in a background thread; results arrive on the queue, then a None."""
    sink: queue.Queue[tuple[int, ProbeResult] | None] = queue.Queue()
    threading.Thread(
        target=_probe_into,
        kwargs={
            "targets": targets, "settings": settings, "concurrency": concurrency,
            "stop": stop, "sink": sink,
        },
        name="probes",
        daemon=True,
    ).start()  # fmt: skip
    return sink


def _drain(
    sink: queue.Queue[tuple[int, ProbeResult] | None],
) -> tuple[list[tuple[int, ProbeResult]], bool]:
    """Block for one result, then take whatever else is ready: one outbox write per batch."""
    batch: list[tuple[int, ProbeResult]] = []
    item = sink.get()
    while item is not None:
        batch.append(item)
        if len(batch) >= _BATCH:
            return batch, False
        try:
            item = sink.get_nowait()
        except queue.Empty:
            return batch, False
    return batch, True


def probe_all(
    targets: Sequence[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> list[ProbeResult]:
    """Local mode: probe every target, results in input order (unfinished ones left out)."""
    stop = stop or threading.Event()
    ordered: list[ProbeResult | None] = [None] * len(targets)
    failed = done = 0
    sink = probe_stream(targets, settings, concurrency=concurrency, stop=stop)
    finished = False
    while not finished:
        batch, finished = _drain(sink)
        for index, result in batch:
            ordered[index] = result
            done += 1
            failed += 0 if result.ok else 1
            if progress:
                progress(done, len(targets), failed)
    return [r for r in ordered if r is not None]


def run_cycle(
    *,
    client: ApiClient,
    outbox: Outbox | None,
    settings: ProbeSettings,
    concurrency: int,
    stop: threading.Event,
    progress: Progress | None = None,
    keep_results: bool = False,
    posters: int = POSTERS,
    clock: Callable[[], float] = time.monotonic,
) -> CycleReport:
    """One cycle; ``outbox=None`` is a dry run that posts nothing.

    Raises ApiError when the domain list cannot be fetched. Once ``stop`` is set no new
    probe or post starts; what is undelivered stays in the outbox.
    """
    started = clock()
    domains, skipped = client.fetch_domains()
    for warning in skipped.lines():
        logger.warning("%s", warning)
    logger.info("the domain list names %d domains", len(domains))
    backlog = outbox.pending() if outbox is not None else []
    if backlog:
        logger.info("re-sending %d results left in the outbox by earlier cycles", len(backlog))
    delivery = (
        _Delivery(client=client, outbox=outbox, workers=posters, stop=stop)
        if outbox is not None
        else None
    )
    if delivery is not None:
        delivery.put(backlog, backlog=True)
    failed: Counter[str] = Counter()
    retrieved = 0
    kept: list[ProbeResult | None] = [None] * len(domains) if keep_results else []
    sink = probe_stream([d.target for d in domains], settings, concurrency=concurrency, stop=stop)
    finished = False
    try:
        while not finished:
            batch, finished = _drain(sink)
            records = [_record(domains[index], result) for index, result in batch]
            if outbox is not None and delivery is not None:
                outbox.add(records)
                delivery.put(records)
                outbox.commit()
            for index, result in batch:
                if result.ok:
                    retrieved += 1
                else:
                    assert result.error is not None
                    failed[result.error.kind.value] += 1
                    logger.warning(
                        "%s (domain_id %d) failed: %s",
                        result.target.text,
                        domains[index].domain_id,
                        result.error,
                        extra={"fields": {"event": "target_failed", "kind": result.error.kind}},
                    )
                if keep_results:
                    kept[index] = result
                if progress:
                    progress(retrieved + sum(failed.values()), len(domains), sum(failed.values()))
    finally:
        if delivery is not None:
            delivery.finish()
        if outbox is not None:
            outbox.close()
    unsaved = outbox.unsaved() if outbox is not None else 0
    queued = len(outbox) - unsaved if outbox is not None else 0
    state_problem = outbox.problem if outbox is not None else None
    problem = str(delivery.failure) if delivery is not None and delivery.failure else None
    if delivery is not None and isinstance(delivery.failure, AuthError):
        code = ExitCode.CRITICAL
    else:  # state_problem: durability was lost, whether or not all was delivered
        waits = queued or unsaved or state_problem or (delivery and delivery.rejected)
        code = ExitCode.WARNING if waits else ExitCode.OK
    report = CycleReport(
        domains=len(domains),
        skipped=skipped.count,
        retrieved=retrieved,
        failed=dict(failed),
        delivered=delivery.delivered if delivery is not None else 0,
        queued=queued,
        rejected=delivery.rejected if delivery is not None else 0,
        backlog=len(backlog),
        elapsed_s=clock() - started,
        exit_code=code,
        problem=problem,
        state_problem=state_problem,
        unsaved=unsaved,
        results=tuple(r for r in kept if r is not None),
    )
    return report


def _record(domain: Domain, result: ProbeResult) -> Record:
    return Record(
        domain.domain_id,
        api.payload(domain, result),
        utc_iso(datetime.now(UTC)),
    )


OUTBOX_NAME = "outbox"


class StateDir:
    """The state dir of one agent process: its lock, held throughout, and a fresh outbox
    for each cycle (SPEC section 5).

    Entering refuses a state dir someone else could plant files in (StateDirError) and one
    whose lock a live agent holds (LockError), both exit 3. When the dir cannot be used
    (read-only, not writable by this user, not a directory, full), monitoring goes on
    without it: ``outbox()`` then keeps results in memory, so the cycle posts directly, says
    once in one line which path failed, why, and the fix, and exits 1.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._folder: Folder | None = None
        self._outbox_folder: Folder | None = None
        self._lock: StateLock | None = None
        self._trouble: tuple[Path, OSError] | None = None
        """What kept the lock from being taken, until it is said."""

    def __enter__(self) -> StateDir:
        try:
            self._folder = open_folder(self.path)
        except OSError as exc:
            self._trouble = (self.path, exc)
            return self
        try:
            lock = StateLock(self.path, folder=self._folder)
            try:
                lock.acquire()
            except OSError as exc:
                self._trouble = (lock.path, exc)
            else:
                self._lock = lock
            # A planted outbox is refused now, at start, before anything is contacted.
            with contextlib.suppress(OSError):
                self._outbox_folder = self._folder.child(OUTBOX_NAME)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for folder in (self._outbox_folder, self._folder):
            if folder is not None:
                folder.close()
        self._outbox_folder = self._folder = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def outbox(self) -> Outbox:
        """This cycle's outbox, which ``run_cycle`` closes; one that stores nothing when the
        state dir cannot be used (the reason logged here, once)."""
        folder, self._outbox_folder = self._outbox_folder, None
        where = self.path
        try:
            if folder is None:
                if self._folder is None:
                    self._folder = open_folder(self.path)  # it may work again (run)
                where = self.path / OUTBOX_NAME
                folder = self._folder.child(OUTBOX_NAME)
            where = folder.path
            box = Outbox.load(folder)
        except (OSError, StateDirError) as exc:  # StateDirError: planted since the start
            return self._direct(where, exc)
        if self._trouble is not None:
            path, error = self._trouble
            why, fix = explain(error)
            self._say(
                f"{path} cannot be used: {why}; running without the lock, so a second agent "
                f"on this state dir would not be refused: {fix}"
            )
        return box

    def _direct(self, where: Path, exc: OSError | StateDirError) -> Outbox:
        doing = "this cycle posts directly"
        if self._lock is None:
            doing = "this cycle runs without the lock and posts directly"
        if isinstance(exc, StateDirError):
            line = f"{exc}; {doing}, keeping nothing on disk"
        else:
            why, fix = explain(exc)
            line = f"{where} cannot be used: {why}; {doing}, keeping nothing on disk: {fix}"
        self._say(line)
        return Outbox.in_memory(line)

    def _say(self, line: str) -> None:
        self._trouble = None
        logger.warning("%s", line, extra={"fields": {"event": "state_dir_unusable"}})


def run_once(
    config: Config,
    *,
    stop: threading.Event,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    dry_run: bool = False,
    progress: Progress | None = None,
    keep_results: bool = False,
    sleep: Callable[[float], object] | None = None,
) -> CycleReport:
    """One API cycle for a Config: under the state-dir lock, through the outbox.

    A dry run takes no lock and touches no outbox. The default retry sleep waits on
    ``stop``, so a daemon asked to stop does not sit out a backoff.
    """
    settings = probe_settings(config, family=family)
    with ApiClient(api_settings(config), sleep=sleep or stop.wait, stop=stop) as client:
        if dry_run:
            report = run_cycle(
                client=client, outbox=None, settings=settings, concurrency=config.concurrency,
                stop=stop, progress=progress, keep_results=keep_results,
            )  # fmt: skip
        else:
            with StateDir(config.state_dir) as state:
                report = run_cycle(
                    client=client, outbox=state.outbox(), settings=settings,
                    concurrency=config.concurrency, stop=stop, progress=progress,
                    keep_results=keep_results,
                )  # fmt: skip
    # The daemon logs its own summary (with the next run time); this one is check-once's.
    logger.info("cycle done: %s", report.summary())
    return report
