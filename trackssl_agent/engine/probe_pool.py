"""Many probes at once: worker threads over one iterator of targets, their results in one
queue in completion order. Used by check-once and run (through ``cycle``), local mode,
``probe``, ``discover`` and ``doctor`` alike.

The pool is sized by what the probes need, up to the caller's ``concurrency``: a probe
that answers keeps a core busy for about a millisecond, so a few workers per core keep the
cores busy and more would only wait for the GIL and OpenSSL's locks; a probe that waits
(a distant, slow or silent server) needs no core, so each probe in flight for longer than
``SLOW`` gets a worker more, as the posters do when the API is slow.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized

from trackssl_agent.engine.probe import ProbeSettings, client_context, probe
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import Target

WAITING = 1024
"""Results at most waiting for their reader before a worker holds the next one back: each
holds a chain of a few KiB, and 64 workers outrunning a reader on the same cores (posting is
slower than probing) piled up most of a 10,000-target cycle in memory."""

SLOW = 0.1
"""Seconds after which a probe in flight counts as waiting on its server, not on a core."""
TICK = 0.05
"""How often the reader's wait looks at the probes in flight."""
HANDFUL = 64
"""Results ``probe_many`` takes from the queue at once when several are ready."""

Item = tuple[int, ProbeResult]


def busy_workers() -> int:
    """Workers enough to keep every core busy with probes that answer at once: one probe
    waits for its server's reply while another computes, per core, plus two."""
    return 2 * (os.cpu_count() or 1) + 2


def probe_many(
    targets: Iterable[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    stop: threading.Event | None = None,
    waiting: int = WAITING,
) -> Iterator[Item]:
    """Probe targets concurrently; yield ``(input index, result)`` as each completes.

    Up to ``concurrency`` worker threads take targets from one iterator and put results on
    one queue: nothing is kept for finished ones, so memory does not grow with the number
    of targets. Once ``stop`` is set (or the caller stops iterating) no new probe starts;
    those in flight end by their deadline. At most ``waiting`` results wait for the caller,
    besides the ``HANDFUL`` at most taken together from them.
    """
    results = start_probes(targets, settings, concurrency=concurrency, stop=stop, waiting=waiting)
    try:
        # What is ready, taken at once: the workers wake this thread once per handful.
        while (batch := results.take(HANDFUL, linger=0.0)) is not None:
            yield from batch
    finally:
        results.halt()


class Probes:
    """The results of running probes, in completion order, then one None.

    One lock guards the queue; a worker wakes the reader only when the reader waits for
    what it just completed (the first result, a full batch, the end), not for every result.
    """

    def __init__(self, halt: threading.Event, *, waiting: int = WAITING) -> None:
        lock = threading.Lock()
        self._ready = threading.Condition(lock)
        """The reader waits on it for results."""
        self._room = threading.Condition(lock)
        """Workers wait on it while ``waiting`` results are unread."""
        self._items: deque[Item | None] = deque()
        self._halt = halt
        self._waiting = waiting
        self._wanted = 0
        """How many results the waiting reader wants before it wakes (0: not waiting)."""
        self._held = 0
        """Workers holding a result back."""
        self.on_tick: list[Callable[[], None]] = []
        """Called about every TICK by the reader's calls and waits."""
        self._ticked = time.monotonic()

    def put(self, item: Item | None) -> None:
        """Hand a result (None: the last worker is done) to the reader; a result waits while
        ``waiting`` others do, unless the probes were halted (the reader may be gone)."""
        with self._ready:
            if item is not None and len(self._items) >= self._waiting:
                self._held += 1
                while len(self._items) >= self._waiting and not self._halt.is_set():
                    self._room.wait(0.25)
                self._held -= 1
            self._items.append(item)
            if self._wanted and (item is None or len(self._items) >= self._wanted):
                self._ready.notify()

    def _pop(self, most: int) -> list[Item | None]:
        """Up to ``most`` items from the front, the final None left in place (caller holds
        the lock); workers held back are let go."""
        taken: list[Item | None] = []
        while self._items and len(taken) < most:
            if self._items[0] is None:
                if not taken:
                    taken.append(None)
                break
            taken.append(self._items.popleft())
        if self._held and taken and taken[0] is not None:
            self._room.notify(len(taken))
        return taken

    def _wait(self, count: int, until: float | None) -> bool:
        """Wait (caller holds the lock) until ``count`` items or the end are queued, or
        ``until`` (monotonic) has passed; False on the latter. Ticks while waiting."""
        while len(self._items) < count and not (self._items and self._items[-1] is None):
            now = time.monotonic()
            if until is not None and now >= until:
                return False
            self._wanted = count
            try:
                self._ready.wait(TICK if until is None else min(TICK, until - now))
            finally:
                self._wanted = 0
            self._tick()
        return True

    def _tick(self) -> None:
        """Run ``on_tick`` if TICK has passed since it last ran (caller holds the lock)."""
        now = time.monotonic()
        if now - self._ticked < TICK:
            return
        self._ticked = now
        self._ready.release()  # growing the pool starts threads: not under the queue's lock
        try:
            for call in self.on_tick:
                call()
        finally:
            self._ready.acquire()

    def get(self, timeout: float | None = None) -> Item | None:
        """The next result, waiting; None once all are done. ``queue.Empty`` after
        ``timeout`` seconds."""
        until = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            self._tick()
            if not self._wait(1, until):
                raise queue.Empty
            return self._pop(1)[0]

    def get_nowait(self) -> Item | None:
        """The next result if one is ready; ``queue.Empty`` if none is."""
        with self._ready:
            if not self._items:
                raise queue.Empty
            return self._pop(1)[0]

    def take(self, most: int, linger: float) -> list[Item] | None:
        """Wait for a result, then up to ``linger`` seconds more while fewer than ``most``
        are ready; the results ready (at most ``most``), or None once all are done."""
        with self._ready:
            self._tick()
            self._wait(1, None)
            if self._items[0] is not None:
                self._wait(most, time.monotonic() + linger)
            taken = self._pop(most)
        if taken[0] is None:
            return None
        return [item for item in taken if item is not None]

    def halt(self) -> None:
        """Start no new probe."""
        self._halt.set()


class _Pool:
    """The workers over one target iterator; more start while probes wait on servers."""

    def __init__(
        self,
        targets: Iterable[Target],
        settings: ProbeSettings,
        probes: Probes,
        *,
        cap: int,
        halt: threading.Event,
        stop: threading.Event | None,
    ) -> None:
        self._source = enumerate(targets)
        self._settings = settings
        self._context = client_context()
        self._probes = probes
        self._cap = cap
        self._halt = halt
        self._stop = stop
        self._lock = threading.Lock()
        self._since: list[float] = []
        """Per worker: when its probe in flight started (monotonic), 0.0 between probes."""
        self._running = 0
        self._exhausted = False

    def _ended(self) -> bool:
        return self._halt.is_set() or (self._stop is not None and self._stop.is_set())

    def grow(self, wanted: int) -> None:
        """Run ``wanted`` workers (at most the cap) while targets are left and a worker
        runs (once none does, the final None may be on its way: no worker starts after it).
        The first call always starts some: the last of them puts the final None."""
        with self._lock:
            start = range(len(self._since), min(wanted, self._cap))
            first = not self._since
            late = self._exhausted or self._ended() or not self._running
            if not start or (late and not first):
                return
            self._since.extend(0.0 for _ in start)
            self._running += len(start)
        for number in start:
            thread = threading.Thread(
                target=self._work, args=(number,), name=f"probe-{number}", daemon=True
            )
            thread.start()

    def look(self) -> None:
        """One worker more for each probe that has waited on its server for ``SLOW``."""
        now = time.monotonic()
        waiting = sum(1 for since in self._since if since and now - since > SLOW)
        if waiting:
            self.grow(busy_workers() + waiting)

    def _work(self, number: int) -> None:
        try:
            while not self._ended():
                with self._lock:
                    item = next(self._source, None)
                    if item is None:
                        self._exhausted = True
                        break
                    self._since[number] = time.monotonic()
                index, target = item
                result = probe(target, self._settings, context=self._context)
                self._since[number] = 0.0
                self._probes.put((index, result))
        finally:
            with self._lock:
                self._since[number] = 0.0
                self._running -= 1
                last = self._running == 0
            if last:
                self._probes.put(None)


def start_probes(
    targets: Iterable[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    stop: threading.Event | None = None,
    waiting: int = WAITING,
) -> Probes:
    """Start workers over ``targets``, up to ``concurrency`` of them; their results arrive
    in the returned Probes (at most ``waiting`` unread), then a None once the last worker
    is done."""
    halt = threading.Event()
    probes = Probes(halt, waiting=waiting)
    cap = max(1, concurrency)
    if isinstance(targets, Sized):
        cap = max(1, min(cap, len(targets)))
    pool = _Pool(targets, settings, probes, cap=cap, halt=halt, stop=stop)
    probes.on_tick.append(pool.look)
    pool.grow(busy_workers())
    return probes
