"""The doctor's value: one ``Check`` per line of its report. Apart from ``doctor`` so that
the modules doing the checks can build them without importing the report above them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """A check's outcome; FAIL in capitals so that it stands out in a column of ``ok``."""

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of ``doctor``: what was checked, how it went, what was found, the fix."""

    check: str
    """The check's short name: ``configuration``, ``api tls``, ``lock``..."""
    status: Status
    detail: str
    """What was found, in one line."""
    fix: str = ""
    """What to do about a warn or FAIL; empty when nothing is to be done."""
