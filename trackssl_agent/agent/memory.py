"""Keeping a long-running process small: glibc's arena cap before threads start, and giving
a finished cycle's freed memory back to the system. No-ops where libc is not glibc."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache


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
ARENAS = 8
"""glibc gives each thread that allocates its own arena (up to 8 per core): freed memory
scattered over many threads' arenas stays mapped. The cap was 2 while ``run`` probed in its
own process (idle RSS after a 4,000-target cycle 33 MB instead of 38 MB); since each cycle
runs in a child that exits (``isolation``), the arenas no longer outlive a cycle, and 2 made
the probe threads queue for malloc's locks: with 8, check-once over 2,000 targets took 3 %
less wall and 4 % less CPU, with the same peak RSS at 2,000, 10,000 and 50,000 targets
(docs/development.md, Memory)."""


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
