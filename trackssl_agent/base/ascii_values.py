"""Numbers and dates read from outside (headers, settings, options), parsed by their ASCII
grammars.

Python's own parsers accept far more than those grammars: ``str.isdigit()`` is true for
``'²'``, which ``int()`` and ``float()`` then refuse with a ValueError nobody expected;
``int()`` and ``float()`` take Arabic-Indic and full-width digits, ``_`` separators,
signs and surrounding whitespace, ``float()`` also ``inf``, ``nan`` and exponents; the
e-mail date parser takes other digits too and raises OverflowError on a huge year. Every
such value goes through here instead: anything outside the grammar is None, never an
exception.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+", re.ASCII)


def is_digits(text: str) -> bool:
    """True when ``text`` is one or more of the ASCII digits 0-9 and nothing else."""
    # isascii() first: the only ASCII characters isdigit() accepts are 0-9.
    return text.isascii() and text.isdigit()


def whole(text: str, *, cap: int | None = None) -> int | None:
    """``text`` as a whole number when it is ASCII digits only (no sign, space or ``_``);
    None otherwise. With ``cap``, a larger value (however many digits) is ``cap``: a
    header of a million nines costs nothing and never meets int()'s digit limit."""
    if not is_digits(text):
        return None
    digits = text.lstrip("0") or "0"
    if cap is not None:
        return cap if len(digits) > len(str(cap)) else min(int(digits), cap)
    if len(digits) > 4000:  # int() refuses more than 4,300 digits; nothing here needs them
        return None
    return int(digits)


def decimal(text: str) -> float | None:
    """``text`` as a number when it is ASCII digits with at most one ``.`` (``2``, ``2.5``,
    ``.5``); None otherwise (signs, exponents, ``inf``, ``nan``, other digits)."""
    if not text.isascii() or not _DECIMAL.fullmatch(text):
        return None
    return float(text)  # may be inf for hundreds of digits: callers bound the value


def http_date(text: str) -> datetime | None:
    """An HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT`` and the older forms) as an aware
    datetime (UTC when it names no zone), or None."""
    if not text.isascii():
        return None
    import email.utils  # noqa: PLC0415 - 7 ms at start-up, and only a Retry-After or Date needs it

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
