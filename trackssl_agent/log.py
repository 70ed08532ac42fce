"""Logging setup and the one redaction point every log record passes through."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from trackssl_agent.base import redaction

LOGGER_NAME = "trackssl_agent"
REDACTED = redaction.REDACTED
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_MAX_BYTES = 10 * 1024 * 1024
_BACKUPS = 5

_redactor = redaction.Redactor()


def register_secret(value: str | None) -> None:
    """Never let ``value``, or any run of 8 of its characters (also JSON-escaped or
    URL-encoded), reach a log line, whatever logger or level emits it."""
    if value:
        _redactor.add(value)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    return _ESCAPES.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def printable(text: str) -> str:
    """``text`` on one line with nothing a terminal acts on: CR, LF, ESC, other controls
    and invisible format characters (bidi overrides) become ``\\n``-style escapes.

    For any text from outside (an API body, a server greeting, a file) before it reaches a
    log line or the terminal: a CR or LF there could forge a log line, an ESC recolour or
    rewrite the screen.
    """
    if text.isprintable():
        return text
    return "".join(map(_escape, text))


def redact(text: str) -> str:
    """``text`` with every run of 8 or more characters of a registered secret replaced."""
    return _redactor.redact(text)


def redact_json(document: str) -> str:
    """A serialized JSON document with every run of 8 or more characters of a secret, in
    its escaped forms too, replaced; still valid JSON."""
    return _redactor.redact(document, serialized_json=True)


def excerpt(text: str, limit: int) -> str:
    """Text from outside (a body, a header, a reason phrase, an error) for a message: the
    secrets removed first (a cut would leave part of one), then printable, at most
    ``limit`` characters and ``...``."""
    shown = printable(redact(text[: limit * 8 + 256]))
    return shown if len(shown) <= limit else shown[:limit] + "..."


class _TextFormatter(logging.Formatter):
    """One record, one line: the message is made printable, so text from outside that
    reached it cannot forge a line; a traceback (debug) keeps its own line breaks."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        text = super().formatException(ei)
        return "\n".join(printable(line) for line in text.split("\n"))

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Each text before it is escaped, then the line as written: a secret's escaped
        # form is registered too, and a replacement there keeps the line valid JSON.
        entry = {key: redact(v) if isinstance(v, str) else v for key, v in entry.items()}
        return redact_json(json.dumps(entry, default=str))


def setup_logging(
    *,
    level: str = "info",
    file: Path | None = None,
    fmt: str = "text",
    stream: TextIO | None = None,
) -> logging.Logger:
    """Configure the agent's logger: to ``file`` with size-based rotation, else to stderr.

    LogFileError when ``file`` is something another user could have planted; OSError when
    it cannot be opened."""
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        # Loaded only with a log file (logging.handlers takes 5 ms). Never opened through a
        # link someone else planted, at any open (``log_file``).
        from trackssl_agent.base.log_file import LogFileHandler  # noqa: PLC0415

        handler = LogFileHandler(file, max_bytes=_MAX_BYTES, backups=_BACKUPS)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def reopen_log_files() -> None:
    """Make the agent's log-file handlers open their file afresh at the next record.

    ``run`` calls this after each cycle run in a child process: the child wrote through
    copies of these handlers, and a rotation there renamed the file this process still has
    open. ``FileHandler.emit`` opens the file again when its stream is None.
    """
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            stream = handler.stream
            handler.stream = None  # FileHandler.emit opens the file when it finds None
            if stream is not None:
                stream.close()
        finally:
            handler.release()


def flush_logs() -> None:
    """Flush every handler of the agent's logger (before ``os._exit``)."""
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.flush()


@dataclass(frozen=True)
class LogLine:
    """A log line's text and, for ``--log-format json``, its fields."""

    text: str
    fields: Mapping[str, object] = field(default_factory=dict)


def get_logger(name: str) -> logging.Logger:
    """A child of the agent's logger, e.g. ``get_logger(__name__)``."""
    if name.startswith(LOGGER_NAME):
        return logging.getLogger(name)
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
