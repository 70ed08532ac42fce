"""The doctor's local checks: the configuration and its token file, the tokens, and the
state dir (owner and mode as ``run`` requires, writable, free space, the lock, the outbox).

They read and never change anything, with one exception: a file is created and removed in
the state dir to prove it writable, the only test a read-only mount or an ACL cannot fool.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

from trackssl_agent.base.users import current_user
from trackssl_agent.config import config
from trackssl_agent.config.file import (
    find_file,
    frozen_executable,
    parse_lines,
    read_text,
    token_file_warning,
    unreadable,
)
from trackssl_agent.config.secret import Secret
from trackssl_agent.config.settings import AGENT_TOKEN, AUTH_TOKEN
from trackssl_agent.doctor.values import Check, Status
from trackssl_agent.errors import ConfigError, StateDirError
from trackssl_agent.log import printable
from trackssl_agent.state.cycle_state import OUTBOX_NAME
from trackssl_agent.state.lock import LOCK_NAME, parse_pid
from trackssl_agent.state.outbox import count_waiting
from trackssl_agent.state.statedir import Folder, explain, open_folder

if sys.platform != "win32":
    import fcntl

LOW_SPACE = 100 * 1024 * 1024
"""Free space under this is a warning: the outbox keeps undelivered results there."""


def configuration(config_path: Path | None) -> tuple[list[Check], config.Config | None, bool]:
    """The configuration's lines, the Config (None if invalid), and whether the file
    could not be read at all (exit 3)."""
    try:
        file = find_file(
            option=config_path, environ=os.environ, cwd=Path.cwd(), executable=frozen_executable()
        )
    except ConfigError as exc:  # the file named is missing or a folder
        return [_unread(exc, "name an existing file")], None, True
    if file is not None:
        try:
            parse_lines(read_text(file), source=str(file))
        except OSError as exc:
            return [_unread(unreadable(file, exc), "name another file")], None, True
        except ConfigError as exc:  # not UTF-8, too large, a line that is not KEY=VALUE
            return [_unread(exc, "correct the file: UTF-8 text, KEY=VALUE lines")], None, True
    try:
        cfg = config.from_process(config_option=config_path, options={})
    except ConfigError as exc:
        fix = "correct that value; `trackssl-agent config` shows where each comes from"
        return [Check("configuration", Status.FAIL, str(exc), fix)], None, False
    where = f"{cfg.file}" if cfg.file else "no environment.txt found; settings from the environment"
    checks = [Check("configuration", Status.OK, f"{where}; every value valid")]
    token_warning = _token_file(cfg)
    if token_warning is not None:
        checks.append(token_warning)
    checks += [
        Check("configuration", Status.WARN, warning, "correct or remove that setting")
        for warning in cfg.warnings
        if cfg.file is None or warning != token_file_warning(cfg.file)
    ]
    return checks, cfg, False


def _unread(exc: ConfigError, fix: str) -> Check:
    """The FAIL line of a configuration file that cannot be read: what happened, then the
    message's own advice (after its ``; ``) as the fix, else ``fix``."""
    detail, _, advice = str(exc).partition("; ")
    return Check("configuration", Status.FAIL, detail, advice or fix)


def _token_file(cfg: config.Config) -> Check | None:
    """Whether the file holding the auth token is private; None if no file holds it."""
    setting = cfg.settings.get(AUTH_TOKEN)
    if cfg.file is None or setting is None or setting.source is not config.Source.FILE:
        return None
    warning = token_file_warning(cfg.file)
    if warning is None:
        return Check(
            "token file", Status.OK, f"{cfg.file} holds {AUTH_TOKEN}; only its owner reads it"
        )
    detail, _, command = warning.partition("; run: ")
    return Check("token file", Status.WARN, detail, f"run: {command}" if command else "")


def tokens(cfg: config.Config) -> list[Check]:
    """Both tokens present; their length and origin, never their value."""
    checks: list[Check] = []
    for key, value in ((AUTH_TOKEN, cfg.auth_token), (AGENT_TOKEN, cfg.agent_token)):
        if not value:
            checks.append(
                Check(
                    "tokens", Status.FAIL, f"{key} is not set",
                    f"set {key} in environment.txt; local mode (check-once --targets) needs none",
                )
            )  # fmt: skip
            continue
        origin = cfg.settings[key].origin if key in cfg.settings else "?"
        detail = f"{key} set, {len(value)} characters, well formed ({origin})"
        raw = value.reveal() if isinstance(value, Secret) else value
        if raw[:1] in "\"'" and raw[-1:] == raw[:1]:
            # The value itself is never shown, so say what is wrong with it.
            checks.append(
                Check(
                    "tokens", Status.WARN, f"{detail}, but it starts and ends with a quote",
                    f"remove the quotes around {key} unless they are part of it",
                )
            )  # fmt: skip
            continue
        checks.append(Check("tokens", Status.OK, detail))
    return checks


def state_dir(cfg: config.Config) -> list[Check]:
    """The state dir as ``run`` would use it."""
    path = cfg.state_dir
    if not path.exists() and not path.is_symlink():
        return [_missing(path), *_space(path)]
    try:
        with open_folder(path) as folder:
            st = os.fstat(folder.fd) if folder.fd is not None else path.stat()
            owner = f"owner {current_user()}, " if os.name == "posix" else ""
            checks = [
                Check(
                    "state dir", Status.OK,
                    f"{path}: {owner}mode {stat.S_IMODE(st.st_mode):04o}, as run requires",
                )
            ]  # fmt: skip
            checks += [_writable(folder), *_space(path), _lock(folder), _outbox(folder)]
    except StateDirError as exc:
        return [Check("state dir", Status.FAIL, str(exc), "see the message")]
    except OSError as exc:
        why, fix = explain(exc)
        return [Check("state dir", Status.FAIL, f"{path} cannot be used: {why}", fix)]
    return checks


def _missing(path: Path) -> Check:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Check(
            "state dir", Status.OK, f"{path} does not exist yet; the first cycle makes it (0700)"
        )
    return Check(
        "state dir", Status.FAIL,
        f"{path} does not exist and {parent} is not writable by {current_user()}",
        f"create {path} for {current_user()} (mode 0700) or set TRACKSSL_STATE_DIR",
    )  # fmt: skip


def _writable(folder: Folder) -> Check:
    name = f".doctor-{os.getpid()}.tmp"
    try:
        os.close(folder.create(name))
        folder.unlink(name)
    except OSError as exc:
        why, fix = explain(exc)
        return Check("state dir", Status.FAIL, f"{folder.path} is not writable: {why}", fix)
    return Check("state dir", Status.OK, f"{folder.path} is writable by {current_user()}")


def _space(path: Path) -> list[Check]:
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return []
    shown = f"{free / 1024 / 1024:,.0f} MiB free on the state dir's file system"
    if free < LOW_SPACE:
        fix = "free some space: undelivered results wait in the outbox there"
        return [Check("free space", Status.WARN, shown, fix)]
    return [Check("free space", Status.OK, shown)]


def _lock(folder: Folder) -> Check:
    """Free or held, and by which pid; the lock is tested, never kept."""
    try:
        fd = folder.open(LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return Check("lock", Status.OK, "free (no agent has run here yet)")
    except OSError as exc:
        return Check("lock", Status.WARN, f"{LOCK_NAME} cannot be read: {exc.strerror}", "")
    try:
        if sys.platform == "win32":
            return Check("lock", Status.OK, "not tested on Windows; run refuses a second agent")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = parse_pid(os.pread(fd, 64, 0))
            who = f"pid {pid}" if pid else "another process"
            return Check(
                "lock", Status.WARN, f"held by {who}: an agent is running on this state dir",
                "fine if that is this host's agent (run), but while it runs check-once and "
                "another run on this state dir exit 3 at once: give each its own "
                "TRACKSSL_STATE_DIR",
            )  # fmt: skip
        fcntl.flock(fd, fcntl.LOCK_UN)
        return Check("lock", Status.OK, "free")
    finally:
        os.close(fd)


def _outbox(folder: Folder) -> Check:
    """How many results wait in the outbox, read without changing a byte; files there that
    no cycle reads are named too, so nothing on disk goes unmentioned."""
    if not folder.exists(OUTBOX_NAME):
        return Check("outbox", Status.OK, "empty (not made yet)")
    with folder.child(OUTBOX_NAME) as box:
        found = count_waiting(box)
    if found.results:
        detail = f"{found.results} results wait to be delivered ({found.segments} segment files)"
        fix = "the next cycle sends them first; if they stay, look at the api and auth lines"
    else:
        detail, fix = "empty: every result was delivered", ""
    if found.others:
        more = f" and {len(found.others) - 1} more" if len(found.others) > 1 else ""
        detail += (
            f"; {len(found.others)} other file(s) that no cycle reads "
            f"({printable(found.others[0])}{more})"
        )
        look = "look at the other files (segments set aside, or put there), then delete them"
        fix = f"{fix}; {look}" if fix else look
    return Check("outbox", Status.WARN if fix else Status.OK, detail, fix)
