"""A progress line on a terminal's stderr: ``3/6 targets done, 3 failed``, rewritten in
place. Drawn at most ten times a second as results come, redrawn by a timer at least once a
second with the latest counts (a burst of results followed by slow targets must not leave
an old count on screen), and drawn a last time at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import click

MIN_GAP = 0.1
"""Seconds between two draws made by results: more often is flicker."""
REDRAW = 1.0
"""Seconds between the timer's redraws: a count shown is never older than this."""


Counts = tuple[int, int, int | None]
"""Done, total, and failed where the caller counts failures."""


class ProgressLine:
    """``render(counts)`` on one rewritten stderr line; call it with the counts after each
    result, and ``end()`` before the output."""

    def __init__(
        self,
        render: Callable[[Counts], str],
        *,
        write: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._render = render
        self._write = write or (lambda text: click.echo(text, err=True, nl=False))
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counts | None = None
        self._last = float("-inf")
        self._ended = threading.Event()
        self._timer: threading.Thread | None = None

    def __call__(self, done: int, total: int, failed: int | None = None) -> None:
        """The latest counts: drawn now unless a draw was made less than MIN_GAP ago (the
        timer then draws them within REDRAW)."""
        with self._lock:
            if self._ended.is_set():
                return
            self._counts = (done, total, failed)
            if self._timer is None:
                self._timer = threading.Thread(target=self._tick, name="progress", daemon=True)
                self._timer.start()
            if self._clock() - self._last >= MIN_GAP:
                self._draw()

    def end(self) -> None:
        """Draw the final counts, then finish the line so later output starts on a fresh one."""
        with self._lock:
            if self._ended.is_set():
                return
            self._ended.set()
            if self._counts is not None:
                self._draw()
                self._write("\n")
        if self._timer is not None:
            self._timer.join(REDRAW * 2)

    def _tick(self) -> None:
        while not self._ended.wait(REDRAW):
            with self._lock:
                if not self._ended.is_set() and self._counts is not None:
                    self._draw()

    def _draw(self) -> None:
        """Under the lock: write the latest counts over the line."""
        assert self._counts is not None
        self._last = self._clock()
        self._write("\r" + self._render(self._counts))
