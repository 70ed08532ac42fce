"""Many probes at once: worker threads over one iterator of targets, their results on one
queue in completion order. Used by check-once and run (through ``cycle``), local mode,
``probe``, ``discover`` and ``doctor`` alike.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sized

from trackssl_agent.engine.probe import ProbeSettings, client_context, probe
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import Target

WAITING = 1024
"""Results at most waiting for their reader before a worker holds the next one back: each
holds a chain of a few KiB, and 64 workers outrunning a reader on the same cores (posting is
slower than probing) piled up most of a 10,000-target cycle in memory."""


def probe_many(
    targets: Iterable[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    stop: threading.Event | None = None,
    waiting: int = WAITING,
) -> Iterator[tuple[int, ProbeResult]]:
    """Probe targets concurrently; yield ``(input index, result)`` as each completes.

    ``concurrency`` worker threads take targets from one iterator and put results on one
    queue: nothing is kept for finished ones, so memory does not grow with the number of
    targets. Once ``stop`` is set (or the caller stops iterating) no new probe starts;
    those in flight end by their deadline. At most ``waiting`` results wait for the caller.
    """
    results = start_probes(targets, settings, concurrency=concurrency, stop=stop, waiting=waiting)
    try:
        while (item := results.get()) is not None:
            yield item
    finally:
        results.halt()


class Probes:
    """The results of running probes, in completion order, then one None."""

    def __init__(self, halt: threading.Event, *, waiting: int = WAITING) -> None:
        self._queue: queue.SimpleQueue[tuple[int, ProbeResult] | None] = queue.SimpleQueue()
        self._halt = halt
        self._room = threading.Semaphore(waiting)

    def put(self, item: tuple[int, ProbeResult] | None) -> None:
        """Hand a result (None: the last worker is done) to the reader; a result waits while
        ``waiting`` others do, unless the probes were halted (the reader may be gone)."""
        if item is not None:
            while not self._room.acquire(timeout=0.25) and not self._halt.is_set():
                pass
        self._queue.put(item)

    def _took(self, item: tuple[int, ProbeResult] | None) -> tuple[int, ProbeResult] | None:
        if item is not None:
            self._room.release()
        return item

    def get(self, timeout: float | None = None) -> tuple[int, ProbeResult] | None:
        """The next result, waiting; None once all are done. ``queue.Empty`` after
        ``timeout`` seconds."""
        return self._took(self._queue.get(timeout=timeout))

    def get_nowait(self) -> tuple[int, ProbeResult] | None:
        """The next result if one is ready; ``queue.Empty`` if none is."""
        return self._took(self._queue.get_nowait())

    def halt(self) -> None:
        """Start no new probe."""
        self._halt.set()


def start_probes(
    targets: Iterable[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    stop: threading.Event | None = None,
    waiting: int = WAITING,
) -> Probes:
    """Start ``concurrency`` worker threads over ``targets``; their results arrive in the
    returned Probes (at most ``waiting`` unread), then a None once the last worker is done."""
    context = client_context()
    halt = threading.Event()
    probes = Probes(halt, waiting=waiting)
    source = enumerate(targets)
    lock = threading.Lock()
    workers = max(1, concurrency)
    if isinstance(targets, Sized):
        workers = max(1, min(workers, len(targets)))
    running = [workers]

    def work() -> None:
        try:
            while not halt.is_set() and not (stop is not None and stop.is_set()):
                with lock:
                    item = next(source, None)
                if item is None:
                    break
                index, target = item
                probes.put((index, probe(target, settings, context=context)))
        finally:
            with lock:
                running[0] -= 1
                last = running[0] == 0
            if last:
                probes.put(None)

    for number in range(workers):
        threading.Thread(target=work, name=f"probe-{number}", daemon=True).start()
    return probes
