"""The state dir one agent process works in: its lock, held throughout, and a fresh outbox
for each cycle; or, when the dir cannot be used, an outbox in memory and one line saying so."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType

from trackssl_agent import log
from trackssl_agent.errors import StateDirError
from trackssl_agent.state.lock import StateLock
from trackssl_agent.state.outbox import Outbox
from trackssl_agent.state.statedir import Folder, explain, open_folder

logger = log.get_logger(__name__)

OUTBOX_NAME = "outbox"


class StateDir:
    """The state dir of one agent process: its lock, held throughout, and a fresh outbox
    for each cycle (SPEC section 5).

    Entering refuses a state dir someone else could plant files in (StateDirError) and one
    whose lock a live agent holds (LockError), both exit 3. When the dir cannot be used
    (read-only, not writable by this user, not a directory, full), monitoring goes on
    without it: ``outbox()`` then keeps results in memory, so the cycle posts directly, says
    once in one line which path failed, why, and the fix, and exits 1.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._folder: Folder | None = None
        self._outbox_folder: Folder | None = None
        self._lock: StateLock | None = None
        self._trouble: tuple[Path, OSError] | None = None
        """What kept the lock from being taken, until it is said."""

    def __enter__(self) -> StateDir:
        try:
            self._folder = open_folder(self.path)
        except OSError as exc:
            self._trouble = (self.path, exc)
            return self
        try:
            lock = StateLock(self.path, folder=self._folder)
            try:
                lock.acquire()
            except OSError as exc:
                self._trouble = (lock.path, exc)
            else:
                self._lock = lock
            # A planted outbox is refused now, at start, before anything is contacted.
            with contextlib.suppress(OSError):
                self._outbox_folder = self._folder.child(OUTBOX_NAME)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for folder in (self._outbox_folder, self._folder):
            if folder is not None:
                folder.close()
        self._outbox_folder = self._folder = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def notice_pending(self) -> bool:
        """Whether the once-said line about the missing lock is still to be said."""
        return self._trouble is not None

    def notice_said(self) -> None:
        """The line was said elsewhere: by a cycle run in a child process (``run``)."""
        self._trouble = None

    def outbox(self) -> Outbox:
        """This cycle's outbox, which ``run_cycle`` closes; one that stores nothing when the
        state dir cannot be used (the reason logged here, once)."""
        folder, self._outbox_folder = self._outbox_folder, None
        where = self.path
        try:
            if folder is None:
                if self._folder is None:
                    self._folder = open_folder(self.path)  # it may work again (run)
                where = self.path / OUTBOX_NAME
                folder = self._folder.child(OUTBOX_NAME)
            where = folder.path
            box = Outbox.load(folder)
        except (OSError, StateDirError) as exc:  # StateDirError: planted since the start
            return self._direct(where, exc)
        if self._trouble is not None:
            path, error = self._trouble
            why, fix = explain(error)
            self._say(
                f"{path} cannot be used: {why}; running without the lock, so a second agent "
                f"on this state dir would not be refused: {fix}"
            )
        return box

    def _direct(self, where: Path, exc: OSError | StateDirError) -> Outbox:
        doing = "this cycle posts directly"
        if self._lock is None:
            doing = "this cycle runs without the lock and posts directly"
        if isinstance(exc, StateDirError):
            line = f"{exc}; {doing}, keeping nothing on disk"
        else:
            why, fix = explain(exc)
            line = f"{where} cannot be used: {why}; {doing}, keeping nothing on disk: {fix}"
        self._say(line)
        return Outbox.in_memory(line)

    def _say(self, line: str) -> None:
        self._trouble = None
        logger.warning("%s", line, extra={"fields": {"event": "state_dir_unusable"}})
