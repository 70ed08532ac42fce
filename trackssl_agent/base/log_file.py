"""The agent's log file (``--log-file``): opened, reopened and rotated without following a
link that someone else could have planted.

The agent often runs as root and names its log file by path, sometimes in a folder others
can write (``/tmp``). Opened by name, a link planted there (``agent.log -> /root/.bashrc``)
would have root append lines carrying text that servers and the API control; and ``run``
opens the file again after every cycle. So every open (at start, after each cycle, after a
rotation) is made relative to the folder's descriptor with ``O_NOFOLLOW`` and checked on the
open descriptor:

- in a *shared* folder, one that group or others may write or that belongs to another user
  (root aside), only a plain file of this user or root with a single name is used: a
  symbolic link, a FIFO or device, a hard link or another user's file is refused;
- elsewhere only this user and root can have put anything there: a symbolic link is followed
  when it belongs to one of them (an admin's choice, such as ``/dev/stderr``), as for the
  state dir; the folder itself may be such a link too.

A refusal at start is LogFileError (exit 3), one line naming the path and the fix. Later (a
link planted between two cycles, or after a rotation) the handler says that line once on
stderr and writes its records to stderr while the file is refused, trying the file again at
each record: a daemon must neither stop over its log file nor lose its lines, and the old
descriptor may be a file a rotation already renamed. Windows has no ``O_NOFOLLOW`` and no
``dir_fd``, and only administrators may make symbolic links there: it opens by name.
"""

from __future__ import annotations

import errno
import io
import logging
import logging.handlers
import os
import stat
import sys
import time
from pathlib import Path

from trackssl_agent.base.users import current_user, user
from trackssl_agent.errors import LogFileError

_POSIX = os.name == "posix"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO planted under the file's name must not hang the agent; the
# flag is cleared again once the file is accepted.
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_MODE = 0o666
"""Cut by the umask, as ``open()`` did: a log shipper running as another user may read it."""
ROTATION_RETRY = 60.0
"""Seconds before a rotation that failed (a file of another user in the way) is tried again."""


def _trusted() -> tuple[int, int]:
    return (os.geteuid(), 0)


def _shared(st: os.stat_result) -> bool:
    """Whether someone other than this user and root could put files in this folder."""
    return bool(st.st_mode & 0o022) or st.st_uid not in _trusted()


def _fix() -> str:
    who = "root" if os.geteuid() == 0 else f"{current_user()} and root"
    return (
        f"remove it, or choose a log file in a folder only {who} can write "
        "(such as /var/log/trackssl-agent/)"
    )


def _refused(path: Path, what: str) -> LogFileError:
    return LogFileError(
        f"the log file {path} {what}: the agent writes its log only to a file no other user "
        f"could have planted; {_fix()}"
    )


def _open_folder(folder: Path) -> tuple[int, os.stat_result]:
    """The folder's descriptor and status; a link there only when this user or root made it."""
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in _trusted():
        raise LogFileError(
            f"the folder {folder} of the log file is a symbolic link made by {user(st.st_uid)}: "
            f"the agent follows no link another user planted; {_fix()}"
        )
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    return fd, os.fstat(fd)


def _open_in(folder_fd: int, shared: bool, path: Path) -> int:
    """Open ``path``'s name in the folder; a link is followed only as the docstring says."""
    name = path.name
    try:
        return os.open(name, _FLAGS | _NOFOLLOW, _MODE, dir_fd=folder_fd)
    except OSError as exc:
        # ELOOP for a link, ENXIO for a FIFO nobody reads, but EACCES for either where the
        # kernel protects sticky folders (protected_regular, some sandboxes): what is there
        # decides, not the errno.
        try:
            found = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except OSError:
            raise exc from None
        if not stat.S_ISLNK(found.st_mode):
            _check(found, shared=shared, path=path)
            if stat.S_ISFIFO(found.st_mode) and exc.errno == errno.ENXIO:
                raise _refused(path, "is a FIFO that nothing reads") from None
            raise
    if shared:
        raise _refused(path, f"is a symbolic link in {path.parent}, which other users can write")
    if found.st_uid not in _trusted():
        raise _refused(path, f"is a symbolic link made by {user(found.st_uid)}")
    return os.open(name, _FLAGS, _MODE, dir_fd=folder_fd)


def _check(st: os.stat_result, *, shared: bool, path: Path) -> None:
    """Refuse, in a shared folder, anything but a plain file of ours with a single name."""
    if not shared:
        return
    where = f"in {path.parent}, which other users can write"
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a plain file"
        raise _refused(path, f"is {kind} {where}")
    if st.st_uid not in _trusted():
        raise _refused(path, f"belongs to {user(st.st_uid)} {where}")
    if st.st_nlink > 1:
        raise _refused(path, f"has other names (hard links) {where}")


def open_log(path: Path, *, encoding: str = "utf-8", errors: str | None = None) -> io.TextIOWrapper:
    """``path`` opened for appending as a text stream. LogFileError (exit 3) when it is
    something another user could have planted; OSError when it cannot be opened."""
    if not _POSIX:
        return path.open("a", encoding=encoding, errors=errors)
    folder_fd, folder = _open_folder(path.parent)
    try:
        shared = _shared(folder)
        fd = _open_in(folder_fd, shared, path)
    finally:
        os.close(folder_fd)
    try:
        _check(os.fstat(fd), shared=shared, path=path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding=encoding, errors=errors)
    except BaseException:
        os.close(fd)
        raise


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose every open goes through ``open_log``; while the file is
    refused after the start, records go to stderr (see the module docstring)."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        # delay: a rotation leaves the stream None, and ``emit`` opens it the safe way.
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        self._said: str | None = None
        """Why the file is refused, once said on stderr; None while it is in use."""
        self._rotation_said: str | None = None
        self._rotate_after = 0.0
        self.stream = self._open()  # at start a refusal is the caller's (exit 3)

    def _open(self) -> io.TextIOWrapper:
        return open_log(Path(self.baseFilename), encoding=self.encoding or "utf-8",
                        errors=self.errors)  # fmt: skip

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the file, rotating it when full; to stderr while refused."""
        try:
            if self.stream is None and not self._reopen():
                self._to_stderr(record)
                return
            if self.shouldRollover(record):
                self.doRollover()
                if not self._reopen():
                    self._to_stderr(record)
                    return
            logging.StreamHandler.emit(self, record)
        except Exception:
            self.handleError(record)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """As RotatingFileHandler, but not while a failed rotation waits for its retry."""
        if self.stream is None or time.monotonic() < self._rotate_after:
            return False
        return bool(super().shouldRollover(record))

    def doRollover(self) -> None:
        """Rename the files (links are renamed, never followed); a rename refused (another
        user's file in the way) is said once, and writing goes on in the same file."""
        try:
            super().doRollover()
        except OSError as exc:
            self._rotate_after = time.monotonic() + ROTATION_RETRY
            line = (
                f"the log file {self.baseFilename} could not be rotated: "
                f"{exc.strerror or exc} ({exc.filename}); it grows until that file is removed"
            )
            if line != self._rotation_said:
                self._rotation_said = line
                _stderr(line)
        else:
            self._rotation_said = None

    def _reopen(self) -> bool:
        """Open the file again; False (said on stderr once) when refused or impossible."""
        if self.stream is not None:
            return True
        try:
            self.stream = self._open()
        except LogFileError as exc:
            self._say(f"{exc}; meanwhile the log goes to stderr")
            return False
        except OSError as exc:
            self._say(
                f"the log file {self.baseFilename} cannot be opened: {exc.strerror or exc}; "
                "meanwhile the log goes to stderr"
            )
            return False
        self._said = None
        return True

    def _say(self, line: str) -> None:
        if line != self._said:
            self._said = line
            _stderr(line)

    def _to_stderr(self, record: logging.LogRecord) -> None:
        _stderr(self.format(record))


def _stderr(line: str) -> None:
    """One line on this process's stderr (looked up now: tests and the CLI replace it)."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
