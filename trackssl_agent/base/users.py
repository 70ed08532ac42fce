"""Users named for messages: ``nobody (uid 65534)``, or ``uid N`` where no name is known."""

from __future__ import annotations

import os


def user(uid: int) -> str:
    """``name (uid N)`` for messages, or ``uid N`` where the name is unknown."""
    try:
        import pwd  # noqa: PLC0415 - POSIX only

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def current_user() -> str:
    """The name this process runs as, for messages."""
    return user(os.geteuid()) if os.name == "posix" else os.environ.get("USERNAME", "this user")
