"""Folders that other users can reach: for servers running as postgres, mysql or prosody,
and for the agent run as ``nobody``.

``tempfile.mkdtemp()`` lands under ``$TMPDIR``, which a runner may set to a private (0700)
folder, and pytest's ``tmp_path`` is 0700 too; a server running as another user cannot
enter either. So these folders live in one per-session folder under the first of /tmp
and /var/tmp whose every ancestor anyone may traverse: made 0711 (others pass through
but cannot list it) and removed at the end of the session, by the process that made it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

_BASES = (Path("/tmp"), Path("/var/tmp"))
_session: tuple[int, Path] | None = None


def _traversable(path: Path) -> bool:
    """Whether anyone may pass through ``path`` and each of its ancestors."""
    try:
        return all(
            part.stat().st_mode & stat.S_IXOTH for part in (path, *path.parents)
        ) and os.access(path, os.W_OK | os.X_OK)
    except OSError:
        return False


def session_dir() -> Path:
    """This session's 0711 folder (made on first use)."""
    global _session  # noqa: PLW0603 - one folder per test process
    if _session is None or _session[0] != os.getpid():
        base = next((b for b in _BASES if _traversable(b)), None)
        if base is None:
            raise RuntimeError("neither /tmp nor /var/tmp can be traversed by every user")
        path = Path(tempfile.mkdtemp(prefix="trackssl-tests-", dir=base))
        path.chmod(0o711)
        _session = (os.getpid(), path)
    return _session[1]


def shared_dir(prefix: str) -> Path:
    """A fresh 0755 folder in the session folder, which any user can enter and read."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=session_dir()))
    path.chmod(0o755)
    return path


def remove_session_dir() -> None:
    """Remove the session folder, if this process made one."""
    global _session  # noqa: PLW0603
    if _session is not None and _session[0] == os.getpid():
        shutil.rmtree(_session[1], ignore_errors=True)
        _session = None
