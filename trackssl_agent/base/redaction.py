"""Removing secrets from text that is about to be printed: any run of ``MIN_RUN`` or more
consecutive characters of a registered secret, in the forms it can be echoed in.

Replacing the exact secret is not enough: a server that echoes the request's
``Authorization`` header has its body or ``Location`` cut to a snippet, which leaves part of
the token; a JSON log line escapes a ``"`` or ``\\`` in it; a proxy echoes the
``Proxy-Authorization`` header, base64 and all. So each secret's 8-character substrings
(of its raw, JSON-escaped, ``repr``-escaped and URL-encoded forms) are indexed in one set,
and a text's own 8-character windows are looked up in it: linear in the text's length,
whatever the number and length of the secrets.
"""

from __future__ import annotations

import bisect
import json
import re
import threading
from urllib.parse import quote, quote_plus

MIN_RUN = 8
"""The shortest run of a secret's characters that is removed wherever it appears."""
MIN_WHOLE = 4
"""A secret form shorter than MIN_RUN is removed only where it appears whole, and only
from this length: a shorter one would blank ordinary words."""
REDACTED = "[REDACTED]"

_JSON_UNIT = re.compile(r'\\u[0-9a-fA-F]{4}|\\.|"')
"""A JSON escape, or an unescaped quote (a string's end), in a serialized line."""


def forms(value: str) -> set[str]:
    """The ways ``value`` can appear in printed text: as is, JSON-escaped (ASCII or not),
    ``repr``-escaped (a message's ``!r``), URL-encoded."""
    found = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        quote(value, safe=""),
        quote(value),
        quote_plus(value, safe=""),
    }
    return {form for form in found if form}


def _json_safe(form: str) -> bool:
    """True when ``form`` can appear as is inside a serialized JSON string (a raw ``"``
    there would be a string's end, a lone ``\\`` cannot be)."""
    try:
        json.loads(f'"{form}"')
    except ValueError:
        return False
    return True


class Redactor:
    """The registered secrets and what removes them; safe to use from any thread.

    Registering swaps in new immutable sets, so a redaction running meanwhile sees either
    the old or the new ones, never a half-built set, without taking a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self._grams: frozenset[str] = frozenset()
        self._json_grams: frozenset[str] = frozenset()
        self._short: tuple[str, ...] = ()

    def add(self, value: str) -> None:
        """Register ``value`` (and its printed forms)."""
        if not value or value in self._values:
            return
        with self._lock:
            grams, json_grams, short = set(self._grams), set(self._json_grams), set(self._short)
            for form in forms(value):
                if len(form) < MIN_RUN:
                    if len(form) >= MIN_WHOLE:
                        short.add(form)
                    continue
                windows = {form[i : i + MIN_RUN] for i in range(len(form) - MIN_RUN + 1)}
                grams |= windows
                if _json_safe(form):
                    json_grams |= windows
            self._grams, self._json_grams = frozenset(grams), frozenset(json_grams)
            # Longest first: a short form inside a longer one must not leave the rest.
            self._short = tuple(sorted(short, key=len, reverse=True))
            self._values = self._values | {value}

    def redact(self, text: str, *, serialized_json: bool = False) -> str:
        """``text`` with every run of MIN_RUN or more characters of a secret form replaced
        by REDACTED. ``serialized_json``: ``text`` is a JSON document (a JSON log line);
        then a replacement never splits an escape or removes a string's quote, so the
        line stays valid JSON."""
        grams = self._json_grams if serialized_json else self._grams
        short = self._short
        if grams and len(text) >= MIN_RUN:
            spans = _spans(text, grams)
            if spans:
                if serialized_json:
                    spans = _json_aligned(text, spans)
                text = _replace(text, spans)
        for form in short:
            if form in text:
                text = text.replace(form, REDACTED)
        return text


def _spans(text: str, grams: frozenset[str]) -> list[tuple[int, int]]:
    """The merged ranges of ``text`` covered by a window found in ``grams``."""
    spans: list[tuple[int, int]] = []
    start = end = -1
    for i in range(len(text) - MIN_RUN + 1):
        if text[i : i + MIN_RUN] in grams:
            if i > end:
                if end >= 0:
                    spans.append((start, end))
                start = i
            end = i + MIN_RUN
    if end >= 0:
        spans.append((start, end))
    return spans


def _json_aligned(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` widened to whole escapes, and split around unescaped quotes."""
    units = [(m.start(), m.end(), m.group() == '"') for m in _JSON_UNIT.finditer(text)]
    ends = [unit_end for _start, unit_end, _quote in units]
    aligned: list[tuple[int, int]] = []
    for span_start, span_end in spans:
        start, end = span_start, span_end
        cuts: list[int] = []
        index = bisect.bisect_right(ends, start)  # the first unit ending after ``start``
        while index < len(units) and units[index][0] < end:
            unit_start, unit_end, quote_mark = units[index]
            if quote_mark:
                cuts.append(unit_start)
            else:
                start, end = min(start, unit_start), max(end, unit_end)
            index += 1
        piece = start
        for cut in cuts:
            if cut > piece:
                aligned.append((piece, cut))
            piece = cut + 1
        if end > piece:
            aligned.append((piece, end))
    return aligned


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each of the ordered ``spans`` replaced by one REDACTED."""
    parts: list[str] = []
    done = 0
    for start, end in spans:
        if start < done:  # widened into the one before: that REDACTED covers it
            done = max(done, end)
            continue
        parts.append(text[done:start])
        parts.append(REDACTED)
        done = end
    parts.append(text[done:])
    return "".join(parts)
