"""One cycle: fetch the domain list, probe all concurrently, post each result as it
completes through the outbox, and summarise. Also the pieces ``check-once`` and ``run``
share: API settings from a Config, and the state dir (lock and outbox) that a cycle runs
with, or without when it cannot be used.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import TracebackType

from trackssl_agent import api, log, report
from trackssl_agent.api import ApiClient, ApiSettings, AuthError, Domain
from trackssl_agent.config import Config
from trackssl_agent.delivery import INITIAL, Delivery
from trackssl_agent.errors import StateDirError
from trackssl_agent.lock import StateLock
from trackssl_agent.outbox import JsonBytes, Outbox, Record
from trackssl_agent.probe import Probes, ProbeSettings, probe_many, start_probes
from trackssl_agent.report import ExitCode
from trackssl_agent.results import ProbeResult, utc_iso
from trackssl_agent.statedir import Folder, explain, open_folder
from trackssl_agent.targets import Target

logger = log.get_logger(__name__)

Progress = Callable[[int, int, int], None]
"""``progress(done, total, failed)`` after each probe."""

POSTERS = INITIAL
"""Concurrent posts at the start of a cycle; more while the API's latency calls for it."""
_BATCH = 256
_LINGER = 0.05
"""Seconds a batch gathers results: a post waits at most this long for its write."""


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


def _batches(probes: Probes) -> Iterator[list[tuple[int, ProbeResult]]]:
    """Block for one result, then gather more for up to ``_LINGER`` seconds (at most
    ``_BATCH``): one outbox write, and so one fsync, per batch rather than per result."""
    while (item := probes.get()) is not None:
        batch = [item]
        end = time.monotonic() + _LINGER
        while len(batch) < _BATCH and (left := end - time.monotonic()) > 0:
            try:
                item = probes.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                yield batch
                return
            batch.append(item)
        yield batch


def probe_all(
    targets: Sequence[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> list[ProbeResult]:
    """Local mode: probe every target, results in input order (unfinished ones left out)."""
    ordered: list[ProbeResult | None] = [None] * len(targets)
    failed = 0
    results = probe_many(targets, settings, concurrency=concurrency, stop=stop)
    for done, (index, result) in enumerate(results, start=1):
        ordered[index] = result
        failed += 0 if result.ok else 1
        if progress:
            progress(done, len(targets), failed)
    return [r for r in ordered if r is not None]


@dataclass
class _Tally:
    """What the consumer counted of this cycle's results."""

    retrieved: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    kept: list[ProbeResult | None] = field(default_factory=list)


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
    probe or post starts; what is undelivered stays in the outbox. The domain list, the
    results and the payloads are unreachable once it returns, and the memory they took
    goes back to the system.
    """
    try:
        return _cycle(
            client=client, outbox=outbox, settings=settings, concurrency=concurrency,
            stop=stop, progress=progress, keep_results=keep_results, posters=posters,
            clock=clock,
        )  # fmt: skip
    finally:
        release_memory()


def _cycle(
    *,
    client: ApiClient,
    outbox: Outbox | None,
    settings: ProbeSettings,
    concurrency: int,
    stop: threading.Event,
    progress: Progress | None,
    keep_results: bool,
    posters: int,
    clock: Callable[[], float],
) -> CycleReport:
    started = clock()
    domains, skipped = client.fetch_domains()
    for warning in skipped.lines():
        logger.warning("%s", warning)
    logger.info("the domain list names %d domains", len(domains))
    backlog = outbox.pending() if outbox is not None else []
    if backlog:
        logger.info("re-sending %d results left in the outbox by earlier cycles", len(backlog))
    backlog_count = len(backlog)
    delivery: Delivery | None = None
    if outbox is not None:
        delivery = Delivery(client=client, outbox=outbox, stop=stop, initial=posters)
        delivery.put(backlog, backlog=True)
    del backlog
    tally = _Tally(kept=[None] * len(domains) if keep_results else [])
    probes = start_probes([d.target for d in domains], settings, concurrency=concurrency, stop=stop)
    try:
        for batch in _batches(probes):
            _consume(batch, domains, outbox, delivery, tally)
            if progress:
                failed = sum(tally.failed.values())
                progress(tally.retrieved + failed, len(domains), failed)
    finally:
        probes.halt()
        if delivery is not None:
            delivery.finish()
        if outbox is not None:
            outbox.close()
    return _report(
        domains=len(domains), skipped=skipped.count, backlog=backlog_count, tally=tally,
        outbox=outbox, delivery=delivery, elapsed=clock() - started,
    )  # fmt: skip


def _consume(
    batch: list[tuple[int, ProbeResult]],
    domains: Sequence[Domain],
    outbox: Outbox | None,
    delivery: Delivery | None,
    tally: _Tally,
) -> None:
    """One batch of results: stored (one write), handed to the posters, counted."""
    if outbox is not None and delivery is not None:
        queued_at = utc_iso(datetime.now(UTC))
        records = [
            Record(domains[i].domain_id, JsonBytes(api.payload_body(domains[i], r)), queued_at)
            for i, r in batch
        ]
        outbox.add(records)
        delivery.put(records)
        outbox.commit()
    for index, result in batch:
        if result.error is None:
            tally.retrieved += 1
        else:
            tally.failed[result.error.kind.value] += 1
            logger.warning(
                "%s (domain_id %d) failed: %s",
                result.target.text,
                domains[index].domain_id,
                result.error,
                extra={"fields": {"event": "target_failed", "kind": result.error.kind}},
            )
        if tally.kept:
            tally.kept[index] = result


def _report(
    *,
    domains: int,
    skipped: int,
    backlog: int,
    tally: _Tally,
    outbox: Outbox | None,
    delivery: Delivery | None,
    elapsed: float,
) -> CycleReport:
    unsaved = outbox.unsaved() if outbox is not None else 0
    queued = len(outbox) - unsaved if outbox is not None else 0
    state_problem = outbox.problem if outbox is not None else None
    problem = str(delivery.failure) if delivery is not None and delivery.failure else None
    # state_problem: durability was lost, whether or not all was delivered
    code = report.cycle_exit_code(
        auth_failed=delivery is not None and isinstance(delivery.failure, AuthError),
        waits=bool(queued or unsaved or state_problem or (delivery and delivery.rejected)),
    )
    return CycleReport(
        domains=domains,
        skipped=skipped,
        retrieved=tally.retrieved,
        failed=dict(tally.failed),
        delivered=delivery.delivered if delivery is not None else 0,
        queued=queued,
        rejected=delivery.rejected if delivery is not None else 0,
        backlog=backlog,
        elapsed_s=elapsed,
        exit_code=code,
        problem=problem,
        state_problem=state_problem,
        unsaved=unsaved,
        results=tuple(r for r in tally.kept if r is not None),
    )


def release_memory() -> None:
    """Give the memory a finished cycle freed back to the system (glibc keeps it otherwise,
    and ``run`` would sit at its peak between cycles)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    return _libc_function("malloc_trim")


_M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2
"""glibc gives each thread that allocates its own arena (up to 8 per core); freed memory
scattered over 64 probe threads' arenas stays mapped. Two arenas kept ``run``'s idle RSS
after a 4,000-target cycle at 33 MB instead of 38 MB, with less growth across cycles."""


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas (before the first worker thread starts); False where
    this libc has no ``mallopt`` or refuses it."""
    mallopt = _libc_function("mallopt")
    return mallopt is not None and mallopt(_M_ARENA_MAX, ARENAS) == 1


def _libc_function(name: str) -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # noqa: PLC0415 - only where it can help

        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # musl and others lack these glibc calls
        return None
    return function


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
    limit_malloc_arenas()
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
