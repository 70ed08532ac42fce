"""The state-dir lock (SPEC section 5): one cycle at a time per state dir.

The operating system holds the lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows)
and drops it when the process dies, however it dies, so a lock left by a dead process is
simply taken over. The file also names the holder's pid for the refusal message.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import TracebackType

from trackssl_agent import log
from trackssl_agent.errors import LockError

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

logger = log.get_logger(__name__)

LOCK_NAME = "agent.lock"
# Windows locks a byte range; locking one far past the pid text keeps the text readable.
_WINDOWS_OFFSET = 1 << 30


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


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (POSIX); assumed alive where unknown."""
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StateLock:
    """``with StateLock(state_dir):`` runs a cycle alone; LockError names the holder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockError (exit 3) naming the process that holds it."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
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
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock; the file stays (removing it would race with a new holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
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
