"""Delivery of a cycle's records to the API: poster threads, as many posts at once as the
API's latency calls for (up to ``CAP``), in the outbox's order.

Order: the backlog of earlier cycles goes before any new result, one ``domain_id`` is
never posted twice at once, and a record replaced by a newer one is skipped, so an older
result never follows a newer one. Taking a record is O(1): two FIFO queues (backlog, new)
and a side list for the rare record whose domain is already in flight.

Concurrency starts at ``initial`` and doubles while records wait for a free poster, the
number delivered per interval keeps rising and the posts spend their time waiting on the
API rather than computing (a slow API: more posts in flight deliver more; a fast one is
held by the cores, where more posters only add threads); a 429 or 503 halves it and holds
new posts back for the delay the API asked for.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from trackssl_agent import log
from trackssl_agent.agent import liveness
from trackssl_agent.cloud.api import ApiClient, AuthError, RejectedError
from trackssl_agent.errors import ApiError
from trackssl_agent.state.outbox import Outbox, Record

logger = log.get_logger(__name__)

CAP = 32
"""Most posts in flight at once: a sane load on the API whatever its latency."""
INITIAL = 4
ROOM = 512
"""New records at most waiting for a poster before the cycle stops taking results: on a busy
machine 64 probe threads outran the posters, and at 10,000 targets 8,700 payloads (16 MiB)
waited in memory while the posts lagged behind."""
_INTERVAL = 0.25
"""Seconds between two looks at the throughput."""


class Concurrency:
    """How many posts may be in flight: grows while throughput rises, halves on overload.

    Pure bookkeeping with an injected clock; the caller holds the lock."""

    def __init__(
        self, initial: int = INITIAL, *, cap: int = CAP, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = max(1, min(initial, cap))
        self.cap = cap
        self._clock = clock
        self._since = clock()
        self._done = 0
        self._best = 0.0
        self._waited = False
        self._network = 0.0
        self._timed = False
        self.paused_until = 0.0

    def waited(self) -> None:
        """A record was ready while every allowed poster was busy."""
        self._waited = True

    def completed(self, network: float | None = None) -> None:
        """One post finished (either way), ``network`` seconds of it spent waiting on the
        API rather than computing (when measured); may change ``limit``."""
        self._done += 1
        if network is not None:
            self._network += network
            self._timed = True
        now = self._clock()
        elapsed = now - self._since
        if elapsed < _INTERVAL:
            return
        rate = self._done / elapsed
        # Little's law: the posts that were waiting on the API at any moment, on average.
        # Below half the posters, the posters are held by the cores, not by the API.
        waiting_on_api = self._network / elapsed if self._timed else math.inf
        self._since, self._done, self._network, self._timed = now, 0, 0.0, False
        if now < self.paused_until:
            return  # a paused interval says nothing about what more posts would deliver
        if self._waited and rate > self._best * 1.1 and waiting_on_api > self.limit / 2:
            self.limit = min(self.cap, self.limit * 2)
        self._best = max(self._best, rate)
        self._waited = False

    def overloaded(self, delay: float) -> None:
        """The API answered 429 or 503: fewer posts, none new for ``delay`` seconds."""
        self.limit = max(1, self.limit // 2)
        self._best = 0.0
        self.paused_until = max(self.paused_until, self._clock() + delay)


class Delivery:
    """Poster threads for one cycle; stop for good when the API turns out to be down or
    the tokens wrong (the rest waits in the outbox)."""

    def __init__(
        self,
        *,
        client: ApiClient,
        outbox: Outbox,
        stop: threading.Event,
        initial: int = INITIAL,
        cap: int = CAP,
    ) -> None:
        self._client = client
        self._outbox = outbox
        self._stop = stop
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        """Posters wait on it for records."""
        self._room = threading.Condition(lock)
        """The cycle waits on it for fewer waiting records (``wait_for_room``)."""
        self._backlog: deque[Record] = deque()
        self._new: deque[Record] = deque()
        self._blocked: list[Record] = []
        """Records whose domain had a post in flight when they came up."""
        self._backlog_left: set[int] = set()
        """``id()`` of backlog records not yet delivered or given up: new ones wait."""
        self._in_flight: set[int] = set()
        self._closed = False
        self.concurrency = Concurrency(initial, cap=cap)
        self._threads: list[threading.Thread] = []
        self.delivered = 0
        self.rejected = 0
        self.failure: ApiError | None = None

    def put(self, records: Sequence[Record], *, backlog: bool = False) -> None:
        """Queue ``records`` (the backlog of earlier cycles with ``backlog``)."""
        with self._cond:
            if backlog:
                self._backlog.extend(records)
                self._backlog_left.update(id(record) for record in records)
            else:
                self._new.extend(records)
            if len(self._in_flight) >= self.concurrency.limit:
                self.concurrency.waited()
            self._grow()
            # One waiting poster per record: waking them all would wake up to CAP threads
            # for each batch, most to find nothing.
            self._cond.notify(len(records))

    def wait_for_room(self, most: int = ROOM) -> None:
        """Wait while more than ``most`` new records wait for a poster, so that results
        never pile up faster than they are posted; at once when delivery has halted."""
        with self._room:
            while len(self._new) > most and not self._halted():
                self._room.wait(0.5)

    def finish(self) -> None:
        """No more records; wait until every queued post is done or given up."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in list(self._threads):
            thread.join()

    def _grow(self) -> None:
        """Start posters up to the current limit (caller holds the lock)."""
        while len(self._threads) < self.concurrency.limit:
            thread = threading.Thread(
                target=self._work, name=f"post-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _halted(self) -> bool:
        return self.failure is not None or self._stop.is_set()

    def _next(self) -> Record | None:
        """The next record that may be posted now (caller holds the lock)."""
        for index, record in enumerate(self._blocked):
            if record.domain_id not in self._in_flight:
                del self._blocked[index]
                return record
        while self._backlog or (self._new and not self._backlog_left):
            queue = self._backlog if self._backlog else self._new
            record = queue.popleft()
            if not self._outbox.is_current(record):  # replaced by a newer result
                self._backlog_left.discard(id(record))
                continue
            if record.domain_id in self._in_flight:
                self._blocked.append(record)  # its older result is being posted
                continue
            return record
        return None

    def _ready(self) -> bool:
        return bool(self._backlog or self._blocked or (self._new and not self._backlog_left))

    def _take(self) -> Record | None:
        with self._cond:
            while True:
                if self._halted():
                    return None
                limit = self.concurrency
                wait = limit.paused_until - time.monotonic()
                if wait <= 0 and len(self._in_flight) < limit.limit:
                    record = self._next()
                    if record is not None:
                        self._in_flight.add(record.domain_id)
                        return record
                elif self._ready():
                    limit.waited()
                if self._closed and not self._ready() and not self._in_flight:
                    return None
                self._cond.wait(min(0.5, wait) if wait > 0 else 0.5)

    def _overloaded(self, delay: float) -> None:
        with self._cond:
            self.concurrency.overloaded(delay)

    def _work(self) -> None:
        while (record := self._take()) is not None:
            started, computed = time.monotonic(), time.thread_time()
            try:
                self._client.post(
                    record.data(), domain_id=record.domain_id, overloaded=self._overloaded,
                )  # fmt: skip
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
                liveness.beat()  # answered or given up: either way the cycle moved on
                with self._cond:
                    self._in_flight.discard(record.domain_id)
                    self._backlog_left.discard(id(record))
                    if self._ready():
                        self.concurrency.waited()  # no poster was free for it
                    spent = time.monotonic() - started
                    self.concurrency.completed(spent - (time.thread_time() - computed))
                    self._grow()
                    self._room.notify()
                    if self._halted() or self._closed:
                        self._cond.notify_all()  # everyone may be done now
                    else:
                        self._cond.notify()  # a slot is free, maybe a blocked record too
