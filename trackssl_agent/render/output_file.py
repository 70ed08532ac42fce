"""``--output FILE``: a command's output written so that a reader sees the old file or the new
one whole, never a half-written file (the node exporter's textfile collector reads on its own
schedule, as may any other consumer)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from trackssl_agent.errors import AgentError, UsageError

FILE_MODE = 0o644
"""Readable by all: the collector that reads the file usually runs as another user."""

_TEMP_SUFFIX = ".tmp"
"""Not ``.prom``: the textfile collector reads only ``*.prom``, so never the temporary."""


def check_writable(path: Path) -> None:
    """UsageError, before anything is probed, when ``path``'s folder cannot take the file."""
    folder = path.parent
    if path.is_dir():
        raise UsageError(f"--output {path}: it is a folder; name a file (in it, or elsewhere)")
    if not folder.is_dir():
        raise UsageError(f"--output {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"--output {path}: folder {folder} is not writable by this user; "
            "choose another path or fix its permissions"
        )


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0644): a temporary file in the same folder,
    flushed and fsynced, renamed over ``path``, then the folder fsynced. AgentError (exit 2)
    with the reason when that fails; no temporary file is left behind."""
    folder = path.parent
    try:
        # A short prefix: a long file name plus the random part must stay within NAME_MAX.
        fd, temp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=_TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        reason = _reason(exc)
        raise AgentError(f"--output {path}: cannot create a file in {folder}: {reason}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            if hasattr(os, "fchmod"):  # POSIX; Windows has only the read-only bit
                os.fchmod(handle.fileno(), FILE_MODE)
        Path(temp).replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(temp).unlink()
        raise AgentError(f"--output {path}: cannot write it: {_reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temp).unlink()
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; a folder that cannot be opened or fsynced (Windows, some
    network file systems) keeps the rename anyway, so that is not an error."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
