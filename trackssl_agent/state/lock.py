"""The state-dir lock (SPEC section 5): one cycle at a time per state dir.

The operating system holds the lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows)
and drops it when the process dies, however it dies, so a lock left by a dead process is
simply taken over whatever the file holds. The file also names the holder's pid for the
refusal message; a clean release empties it, so a pid found there on the next start means
its holder died without releasing (the take-over line then says so). It is opened without
following a link, and only a plain file of its own is ever written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
from pathlib import Path
from types import TracebackType

from trackssl_agent import log
from trackssl_agent.errors import LockError, StateDirError
from trackssl_agent.state.statedir import Folder, open_folder

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

logger = log.get_logger(__name__)

LOCK_NAME = "agent.lock"
# Windows locks a byte range; locking one far past the pid text keeps the text readable.
_WINDOWS_OFFSET = 1 << 30
_PID = re.compile(r"\s*([0-9]{1,10})\s*")
_PID_MAX = (1 << 31) - 1
"""pid_t is 32 bits: a larger number cannot be a process (and overflows ``os.kill``)."""


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        os.lseek(fd, _WINDOWS_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        os.lseek(fd, _WINDOWS_OFFSET, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def parse_pid(data: bytes) -> int | None:
    """The pid a lock file names, or None for anything else (empty, garbage, out of range)."""
    match = _PID.fullmatch(data.decode("ascii", "replace"))
    pid = int(match.group(1)) if match else 0
    return pid if 0 < pid <= _PID_MAX else None


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return parse_pid(os.read(fd, 64))
    except OSError:
        return None  # the pid is for messages only


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (POSIX); assumed alive where unknown."""
    if sys.platform == "win32":
        return True
    if not 0 < pid <= _PID_MAX:
        return False  # 0 and negatives would name process groups, not a process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True


def _open_lock_file(folder: Folder) -> tuple[int, bool]:
    """The lock file's descriptor and whether it is writable; never through a link.

    A lock file that exists on a read-only file system (or that this user may only
    read) can still be locked: ``flock`` needs no write access.
    """
    path = folder.path / LOCK_NAME
    try:
        try:
            return folder.create(LOCK_NAME, os.O_RDWR), True
        except FileExistsError:
            pass
        try:
            fd, writable = folder.open(LOCK_NAME, os.O_RDWR), True
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            fd, writable = folder.open(LOCK_NAME, os.O_RDONLY), False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateDirError(
                f"{path} is a symbolic link: the agent does not follow links inside its state "
                "dir; remove it (the agent makes the file again)"
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "has other names (hard links)" if stat.S_ISREG(st.st_mode) else "is not a file"
        raise StateDirError(
            f"{path} {what}: the agent writes only a plain file of its own there; "
            "remove it (the agent makes the file again)"
        )
    return fd, writable


def _write_pid(fd: int, *, pid: int | None) -> None:
    """Name ``pid`` in the lock file, or empty it (None)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        if pid is not None:
            os.write(fd, f"{pid}\n".encode())
    except OSError as exc:
        # The lock is held by the descriptor; the pid only makes the messages nicer.
        logger.debug("could not write the lock file: %s", exc)


class StateLock:
    """``with StateLock(state_dir):`` runs a cycle alone; LockError names the holder.

    StateDirError (exit 3) when the state dir or the lock file is something someone else
    could have planted; OSError when the state dir cannot be used at all.
    """

    def __init__(self, directory: Path, *, folder: Folder | None = None) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self._folder = folder
        """The state dir, already opened by the caller (who closes it)."""
        self._fd: int | None = None
        self._writable = False

    def acquire(self) -> None:
        """Take the lock or raise LockError (exit 3) naming the process that holds it."""
        if self._folder is not None:
            fd, writable = _open_lock_file(self._folder)
        else:
            with open_folder(self.directory) as folder:
                fd, writable = _open_lock_file(folder)
        try:
            if not _try_lock(fd):
                holder = _read_pid(fd)
                who = f"pid {holder}" if holder else "another process"
                raise LockError(
                    f"another trackssl-agent ({who}) is using the state dir "
                    f"{self.directory}; give each agent its own TRACKSSL_STATE_DIR"
                )
            previous = _read_pid(fd)
            if previous and previous != os.getpid() and not pid_alive(previous):
                logger.info("took over the lock left by pid %d, which is gone", previous)
            if writable:
                _write_pid(fd, pid=os.getpid())
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._writable = fd, writable

    def release(self) -> None:
        """Drop the lock; the file stays (removing it would race with a new holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._writable:
                # Still locked: no other holder can have written its pid yet. Empty, the
                # file tells the next holder this one left cleanly (no take-over line).
                _write_pid(fd, pid=None)
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
