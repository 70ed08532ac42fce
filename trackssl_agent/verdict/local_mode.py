"""``probe`` and local mode (``check-once --targets``): probe the targets, judge each result as
it arrives, and hand the judged results on in input order, each as soon as every target before
it is done. Ctrl-C ends the run early with what finished (SPEC section 4a).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

from trackssl_agent.engine.probe import ProbeSettings
from trackssl_agent.engine.probe_pool import probe_many
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import Target
from trackssl_agent.verdict.judge import Judged, Tally, Verdict

Progress = Callable[[int, int, int], None]
"""``(done, total, failed)`` after each result."""


@dataclass(frozen=True)
class Outcome:
    """What a judged run finished: results in input order, unfinished ones left out."""

    judged: tuple[Judged, ...]
    total: int
    """The targets given."""
    interrupted: bool
    """Ctrl-C ended the run before every target was done."""

    def tally(self) -> Tally:
        """The summary line's counts; unfinished targets count as not probed."""
        return Tally.of((j.verdict for j in self.judged), total=self.total)


@contextlib.contextmanager
def _one_interrupt() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt once; copies that follow are ignored while the
    finished results are written. A terminal's Ctrl-C reaches a frozen build twice (the
    process group's copy and the bootloader's forward), microseconds apart."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield  # someone else (a test harness, an embedding program) decides
        return
    seen = [False]

    def handle(_signum: int, _frame: FrameType | None) -> None:
        if not seen[0]:
            seen[0] = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def judge_all(
    targets: Sequence[Target],
    settings: ProbeSettings,
    *,
    concurrency: int,
    judge: Callable[[ProbeResult], Verdict],
    on_ready: Callable[[Judged], None] | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Probe and judge every target; call ``on_ready`` with each judged result in input
    order as soon as all before it are done. On Ctrl-C no new probe starts, the finished
    results not yet handed on are handed on (in input order, gaps skipped), and the outcome
    says it was interrupted."""
    stop = stop or threading.Event()
    finished: dict[int, Judged] = {}
    handed = 0  # the index of the next result to hand on
    failed = 0
    interrupted = False
    with _one_interrupt():
        try:
            results = probe_many(targets, settings, concurrency=concurrency, stop=stop)
            for index, result in results:
                finished[index] = Judged(result, judge(result))
                failed += 0 if result.ok else 1
                if progress is not None:
                    progress(len(finished), len(targets), failed)
                while handed in finished:
                    if on_ready is not None:
                        on_ready(finished[handed])
                    handed += 1
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            if on_ready is not None:
                for index in sorted(i for i in finished if i >= handed):
                    on_ready(finished[index])
    ordered = tuple(finished[index] for index in sorted(finished))
    return Outcome(ordered, len(targets), interrupted)
