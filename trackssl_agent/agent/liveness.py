"""Signs that a cycle makes progress, for the watchdog over a cycle run in a child process.

A cycle calls ``beat()`` whenever a step that is bounded in time ends: the domain list
fetched, a batch of probe results taken, a post answered. It does nothing unless
``isolation`` armed it in the cycle's child process, where it bumps a counter in memory the
agent shares; the agent kills a child whose counter stands still for too long.
"""

from __future__ import annotations

from collections.abc import Callable

_hook: list[Callable[[], None]] = []
"""The armed hook, if any (a list: no ``global`` statement needed to set it)."""


def beat() -> None:
    """Say that the cycle in this process made progress."""
    for hook in _hook:
        hook()


def arm(hook: Callable[[], None] | None) -> None:
    """Have ``beat()`` call ``hook`` (None: nothing) in this process from now on."""
    _hook[:] = [hook] if hook is not None else []
