"""Logging setup and the one redaction point every log record passes through."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

LOGGER_NAME = "trackssl_agent"
REDACTED = "[REDACTED]"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_MAX_BYTES = 10 * 1024 * 1024
_BACKUPS = 5

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line, whatever logger or level emits it."""
    if value:
        _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")

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
        return redact(json.dumps(entry, default=str))


def setup_logging(
    *,
    level: str = "info",
    file: Path | None = None,
    fmt: str = "text",
    stream: TextIO | None = None,
) -> logging.Logger:
    """Configure the agent's logger: to ``file`` with size-based rotation, else to stderr."""
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            file, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def get_logger(name: str) -> logging.Logger:
    """A child of the agent's logger, e.g. ``get_logger(__name__)``."""
    if name.startswith(LOGGER_NAME):
        return logging.getLogger(name)
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
