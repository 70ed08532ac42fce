"""environment.txt: where it is looked for, how its lines are parsed, and the checks on
files the configuration names (the state dir's default, a log file, the token file's mode).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trackssl_agent.base.file_errors import cannot_read
from trackssl_agent.config.settings import AUTH_TOKEN, CONFIG_KEY
from trackssl_agent.errors import ConfigError

FILE_NAME = "environment.txt"
APP_NAME = "trackssl-agent"
MAX_FILE_BYTES = 1024 * 1024
"""environment.txt is a dozen lines; a bigger file is the wrong file."""

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMMENT = re.compile(r"\s#")


def default_state_dir(
    *, environ: Mapping[str, str], platform: str = sys.platform, is_root: bool | None = None
) -> Path:
    """The platform's per-user (or system, for root) state directory for the agent."""
    if platform == "win32":
        base = environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_NAME
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if is_root:
        return Path("/var/lib") / APP_NAME
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / APP_NAME


def find_file(
    *,
    option: Path | None,
    environ: Mapping[str, str],
    cwd: Path,
    executable: Path | None,
) -> Path | None:
    """The configuration file: ``--config``, ``$TRACKSSL_CONFIG``, ``./environment.txt``,
    then ``environment.txt`` beside ``executable`` (pass it only for frozen builds)."""
    if option is not None:
        if "\0" in str(option):
            raise ConfigError("--config: expected a path without NUL characters")
        _check_named(option, f"--config {option}")
        return option
    named = environ.get(CONFIG_KEY)
    if named:
        if "\0" in named:
            raise ConfigError(f"${CONFIG_KEY}: expected a path without NUL characters")
        path = Path(named)
        _check_named(path, f"${CONFIG_KEY}={named}")
        return path
    for candidate in (cwd / FILE_NAME, executable.parent / FILE_NAME if executable else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _check_named(path: Path, given: str) -> None:
    """ConfigError unless ``path``, the file the user named (as ``given``), is a file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{given}: no such file; name an existing {FILE_NAME}") from None
    except OSError as exc:  # a folder on the way this user may not enter
        raise ConfigError(f"{given}: {cannot_read(exc)}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{given}: it is a folder; name the {FILE_NAME} file itself")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{given}: not a regular file; name an existing {FILE_NAME}")


def unreadable(path: Path, exc: OSError) -> ConfigError:
    """The error for a configuration file that exists but cannot be read."""
    return ConfigError(f"{path}: cannot read it: {cannot_read(exc)}")


def frozen_executable() -> Path | None:
    """The executable of a PyInstaller build, whose folder may hold environment.txt."""
    return Path(sys.executable) if getattr(sys, "frozen", False) else None


@dataclass(frozen=True)
class Line:
    """One ``KEY=VALUE`` of a configuration file."""

    key: str
    value: str
    number: int


def _unquote(value: str, *, where: str, key: str) -> str:
    # Only the agent's own keys are named: a pasted token may stand before the '=' too.
    if not key.upper().startswith("TRACKSSL_"):
        key = "the value (key not shown: it may be a secret)"
    if value[:1] in {'"', "'"}:
        quote = value[0]
        end = value.find(quote, 1)
        if end < 0:
            raise ConfigError(f"{where}: {key}: the opening {quote} is never closed")
        rest = value[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(f"{where}: {key}: unexpected text after the closing {quote}")
        return value[1:end]
    # An unquoted value ends at a " #" comment, as in shell and dotenv files. A fixed-width
    # search: r"\s+#" backtracks over every run of spaces, quadratic in the line length.
    comment = _COMMENT.search(value)
    return (value[: comment.start()] if comment else value).strip()


def parse_lines(text: str, *, source: str) -> list[Line]:
    """Parse environment.txt text; ConfigError names the file, line and what was expected.

    Neither the value nor the key of a bad line is quoted back: a pasted token may be
    either. Linear in the length of ``text`` (no backtracking regular expression).
    """
    lines: list[Line] = []
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source}, line {number}"
        head, equals, value = stripped.partition("=")
        if not equals:
            raise ConfigError(f"{where}: expected KEY=VALUE, found no '='")
        words = head.split()
        if len(words) == 2 and words[0] == "export":
            words = words[1:]
        key = words[0] if len(words) == 1 else ""
        if not _KEY.match(key):
            raise ConfigError(
                f"{where}: the text before '=' is not a valid key: expected "
                "letters, digits and '_' (the line is not shown: it may hold a secret)"
            )
        lines.append(Line(key.upper(), _unquote(value.strip(), where=where, key=key), number))
    return lines


def read_text(path: Path) -> str:
    """The file's text, at most MAX_FILE_BYTES; ConfigError names the line that is not UTF-8."""
    with path.open("rb") as stream:
        data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; is it the right file?"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text; save the file as UTF-8") from None


def token_file_warning(file: Path, *, platform: str = sys.platform) -> str | None:
    """A warning when the file holding the auth token is readable by other users (POSIX)."""
    if platform == "win32":
        return None
    try:
        mode = file.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"{file} holds {AUTH_TOKEN} and is readable by other users "
            f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {file}"
        )
    return None


def check_log_file(path: Path) -> str | None:
    """Why ``path`` cannot be the log file, or None when it looks usable.

    Checked without creating anything, so ``config`` can say it too; opening it in
    ``start_logging`` is the final word.
    """
    if path.is_dir():
        return "a file, not a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else "a file this user can write"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"a path whose folder is a directory ({parent} is not)"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"a file in a folder this user can write ({parent} is not writable)"
    return None
