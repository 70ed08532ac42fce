"""Tests that need root say so: one line, a skip on a developer's machine, a failure under
CI=true (CI runs as root, so a skip there would hide a test that never ran)."""

from __future__ import annotations

import os

import pytest


def need_root(why: str) -> None:
    """Skip (fail under CI=true) with ``needs root: why`` unless running as root."""
    if os.geteuid() == 0:
        return
    message = f"needs root: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI runs the suite as root)")
    pytest.skip(message)
