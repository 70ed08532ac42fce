"""Why a file named by the user cannot be read, in the agent's words: the same phrase for
``--config``, ``$TRACKSSL_CONFIG``, ``--targets`` and the doctor, never ``[Errno 13]``."""

from __future__ import annotations

import errno

from trackssl_agent.base.users import current_user


def cannot_read(exc: OSError) -> str:
    """What stopped the read of a file, with what to do about it, as one phrase."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError) or exc.errno == errno.EISDIR:
        return "it is a folder; name a file"
    if isinstance(exc, PermissionError):
        return f"{current_user()} may not read it; change its permissions or run as its owner"
    reason = exc.strerror or type(exc).__name__
    return reason[:1].lower() + reason[1:]
