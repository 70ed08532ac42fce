"""The state dir and the folders in it, opened so that nothing someone else planted is followed.

On POSIX a folder is held open by descriptor and every file in it is reached relative to
that descriptor, never through a symbolic link, so renaming a path or planting a link cannot
redirect a write; Windows has neither, so there a folder is reached by path. A folder owned
by another user (root aside) or writable by group or others is refused with StateDirError
(exit 3): whoever can write it could plant links for the agent to follow. Every other
failure is an OSError that ``explain`` turns into words, so callers can go on without it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from trackssl_agent.base.users import current_user, user
from trackssl_agent.errors import StateDirError

_POSIX = os.name == "posix"
# O_NONBLOCK: opening a FIFO planted under a file's name must not hang the agent.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
DIR_MODE = 0o700
FILE_MODE = 0o600


def check_owner(st: os.stat_result, path: Path) -> None:
    """Refuse a folder another user (root aside) owns or group or others may write."""
    if not _POSIX:
        return  # Windows ACLs are not mode bits; the installer's folder is trusted there
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise StateDirError(
            f"the state dir {path} belongs to {user(st.st_uid)}, not to {user(me)}: "
            "another user could plant files there for the agent to follow; "
            f"chown it to {user(me)} or set TRACKSSL_STATE_DIR to a directory of your own"
        )
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        raise StateDirError(
            f"the state dir {path} is writable by group or others (mode {mode:04o}): "
            f"anyone could plant files there for the agent to follow; run `chmod go-w {path}` "
            "or set TRACKSSL_STATE_DIR to a private directory"
        )


def explain(exc: OSError) -> tuple[str, str]:
    """Why a state-dir operation failed and what fixes it: two phrases for one line."""
    elsewhere = "or set TRACKSSL_STATE_DIR to another directory"
    code = exc.errno
    if code == errno.EROFS:
        return "the file system is read-only", f"make it writable {elsewhere}"
    if code in (errno.EACCES, errno.EPERM):
        who = current_user()
        return f"permission denied to {who}", f"make it writable by {who} {elsewhere}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return "a file that is not a directory is in the way", f"move that file away {elsewhere}"
    if code == errno.EISDIR:
        return "a directory is in the way of a file", f"move that directory away {elsewhere}"
    if code == errno.ENOSPC:
        return "no space is left on the device", f"free some space {elsewhere}"
    if code == getattr(errno, "EDQUOT", -1):
        return "the disk quota is exhausted", f"free some space or raise the quota {elsewhere}"
    why = exc.strerror or type(exc).__name__
    return why[0].lower() + why[1:], f"check it {elsewhere}"


class Folder:
    """An opened directory of the agent's; files in it are reached without following links."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd
        """The directory's descriptor on POSIX; None on Windows (reached by path)."""

    def _name(self, name: str) -> str | Path:
        return name if self.fd is not None else self.path / name

    def open(self, name: str, flags: int, mode: int = FILE_MODE) -> int:
        """``os.open`` a file of this folder without following a symbolic link."""
        return os.open(self._name(name), flags | _NOFOLLOW | _NONBLOCK, mode, dir_fd=self.fd)

    def create(self, name: str, access: int = os.O_WRONLY) -> int:
        """Create ``name`` exclusively (a link there counts as existing), mode 0600 whatever
        the umask."""
        fd = self.open(name, access | os.O_CREAT | os.O_EXCL)
        if _POSIX:
            try:
                os.fchmod(fd, FILE_MODE)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def names(self) -> list[str]:
        """The entries of the folder."""
        if self.fd is None:
            return os.listdir(self.path)  # noqa: PTH208
        # listdir reads through a duplicate of the fd, which shares its position with every
        # copy, a forked cycle's (``isolation``) included; one killed mid-listing would leave
        # the position past some entries. Start from the top.
        os.lseek(self.fd, 0, os.SEEK_SET)
        return os.listdir(self.fd)  # noqa: PTH208 - by fd

    def lstat(self, name: str) -> os.stat_result:
        """The entry itself, a link not followed."""
        return os.stat(self._name(name), dir_fd=self.fd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        """Whether anything at all (a dangling link included) has that name."""
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def unlink(self, name: str) -> None:
        """Remove one entry (a link itself, never its target); a missing one is fine."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._name(name), dir_fd=self.fd)

    def rename(self, source: str, target: str) -> None:
        """Rename within the folder, replacing ``target``."""
        os.replace(self._name(source), self._name(target), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def fsync(self) -> None:
        """Make renames and unlinks in the folder durable (a no-op on Windows)."""
        if self.fd is not None:
            os.fsync(self.fd)

    def child(self, name: str) -> Folder:
        """Open (create 0700 if missing) the subfolder ``name``; a link there is refused."""
        path = self.path / name
        if self.fd is None:
            return open_folder(path, follow=False)
        created = False
        try:
            st = self.lstat(name)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIR_MODE, dir_fd=self.fd)
                created = True
            st = self.lstat(name)
        if stat.S_ISLNK(st.st_mode):
            raise _link_refused(path)
        fd = _open_made(
            lambda: os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=self.fd),
            lambda: os.chmod(name, DIR_MODE, dir_fd=self.fd),
            created=created,
        )
        return _checked(path, fd, created=created)

    def close(self) -> None:
        """Close the descriptor; idempotent."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Folder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _link_refused(path: Path) -> StateDirError:
    return StateDirError(
        f"{path} is a symbolic link: the agent does not follow links inside its state dir; "
        "remove it (nothing else writes there)"
    )


def _make_parents(path: Path) -> None:
    """Make the missing folders up to ``path`` with the modes the umask gives, each with
    its owner's rwx added: under umask 0777 a folder made 000 could not even hold the next
    one (for a user without root's privilege)."""
    if path.is_dir():
        return
    _make_parents(path.parent)
    try:
        os.mkdir(path)  # noqa: PTH102 - tells us whether we made it
    except FileExistsError:
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)  # noqa: PTH116 - beside os.mkdir
    if mode & 0o700 != 0o700:
        path.chmod(mode | 0o700)


def _open_made(opener: Callable[[], int], chmod: Callable[[], None], *, created: bool) -> int:
    """Open a folder with ``opener``; one this process just made and cannot read is
    chmod'ed 0700 first: mkdir's mode is cut by the umask, and 0777 leaves 000, which only
    root may open. Only a user without that privilege gets here, and its chmod can touch
    nothing but its own files, so the path it goes by needs no more trust than the open."""
    try:
        return opener()
    except PermissionError:
        if not created:
            raise
    chmod()
    return opener()


def _checked(path: Path, fd: int, *, created: bool) -> Folder:
    try:
        st = os.fstat(fd)
        if created and st.st_uid == os.geteuid():
            os.fchmod(fd, DIR_MODE)  # mkdir's mode was cut by the umask
        check_owner(st, path)
    except BaseException:
        os.close(fd)
        raise
    return Folder(path, fd)


def open_folder(path: Path, *, follow: bool = True) -> Folder:
    """Open (create 0700, with its parents, if missing) and check the folder ``path``.

    ``follow=False`` refuses a symbolic link as the last component; with ``follow`` a link
    is taken only when it belongs to this user or root (an admin's choice of location).
    StateDirError (exit 3) when someone else could plant files there; OSError when the
    folder cannot be made or opened.
    """
    if not _POSIX:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
        return Folder(path, None)
    created = False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        _make_parents(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)  # noqa: PTH102 - tells us whether we made it
            created = True
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if not follow:
            raise _link_refused(path)
        if st.st_uid not in (os.geteuid(), 0):
            raise StateDirError(
                f"the state dir {path} is a symbolic link made by {user(st.st_uid)}: "
                "the agent follows no link another user planted; remove it or set "
                "TRACKSSL_STATE_DIR to a directory of your own"
            )
    flags = os.O_RDONLY | _DIRECTORY | getattr(os, "O_CLOEXEC", 0)
    fd = _open_made(
        lambda: os.open(path, flags if follow else flags | _NOFOLLOW),
        lambda: path.chmod(DIR_MODE),
        created=created,
    )
    return _checked(path, fd, created=created)
