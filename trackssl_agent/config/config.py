"""Configuration (SPEC section 3): environment.txt, the process environment and options
merged into one frozen ``Config``, each value remembering where it came from.

Which settings exist, their defaults, types and bounds are in ``settings.SETTINGS``; this
module merges and validates by that table. Nothing here logs: problems that are not fatal
come back as ``Config.warnings`` for the caller to log once logging is set up (logging is
itself configured from this file).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from trackssl_agent import log
from trackssl_agent.config import settings
from trackssl_agent.config.file import (
    Line,
    check_log_file,
    default_state_dir,
    find_file,
    frozen_executable,
    parse_lines,
    token_file_warning,
    unreadable,
)
from trackssl_agent.config.file import (
    read_text as read_file_text,
)
from trackssl_agent.config.secret import Secret
from trackssl_agent.config.settings import (
    AGENT_TOKEN,
    ALLOW,
    AUTH_TOKEN,
    CA_BUNDLE,
    CONCURRENCY,
    CONFIG_KEY,
    INTERVAL,
    LOG_FILE,
    LOG_FORMAT,
    LOG_LEVEL,
    STATE_DIR,
    TIMEOUT,
    URL,
    Kind,
    Spec,
    check_url,
    parse_duration,
)
from trackssl_agent.engine import allow
from trackssl_agent.errors import ConfigError, LogFileError

__all__ = [
    "AGENT_TOKEN", "ALLOW", "AUTH_TOKEN", "CA_BUNDLE", "CONCURRENCY", "CONFIG_KEY", "DEFAULTS",
    "INTERVAL", "KEYS", "LOG_FILE", "LOG_FORMAT", "LOG_LEVEL", "MAX_INTERVAL", "MIN_INTERVAL",
    "STATE_DIR", "TIMEOUT", "URL", "Config", "Setting", "Source", "check_log_file", "check_url",
    "default_state_dir", "frozen_executable", "load", "parse_duration", "parse_lines",
    "start_logging",
]  # fmt: skip

DEFAULTS: dict[str, str] = {row.key: row.default for row in settings.KEYED if row.key}
KEYS = tuple(DEFAULTS)
KNOWN_KEYS = (*KEYS, *settings.ALIASES, CONFIG_KEY)
MIN_INTERVAL = float(settings.spec("interval").low or 0)
MAX_INTERVAL = float(settings.spec("interval").high or 0)
_SHOWN_CHARS = 60
"""At most this much of a bad value is quoted back in a message."""
_SHORT = 16
"""Longest bad value of a number, duration or name quoted back: anything longer may be a
token pasted on the wrong line."""
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""Control characters (tab aside) that no value may hold: a NUL in a path is a crash
later, an escape sequence in a value reaches the terminal."""


class Source(StrEnum):
    """Where a value came from, highest precedence first."""

    OPTION = "option"
    ENVIRONMENT = "environment"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True)
class Setting:
    """One raw value and its origin, for messages and ``config`` output."""

    key: str
    value: str = field(repr=False)
    """The text as given; a secret's is dropped once it is held as a ``Secret``."""
    source: Source
    origin: str
    """``--timeout``, ``$TRACKSSL_TIMEOUT``, ``/etc/x/environment.txt, line 4`` or ``default``."""
    base: Path | None = None
    """Directory relative paths are resolved against."""


@dataclass(frozen=True)
class Config:
    """The effective configuration; build it with ``load``. One attribute per row of
    ``settings.SETTINGS`` that has a key."""

    auth_token: Secret | None
    agent_token: str | None
    url: str
    interval: float
    """Seconds between cycles of ``run``."""
    concurrency: int
    timeout: float
    ca_bundle: Path | None
    allow: allow.AllowList | None
    """None: every target may be probed."""
    state_dir: Path
    log_file: Path | None
    log_level: str
    log_format: str
    verify: bool
    """Judging: trust, name and weak-crypto problems are warnings (``--verify``)."""
    ca_file: Path | None
    """Judging: extra trust anchors (``--ca-file``); not the API's ``ca_bundle``."""
    file: Path | None
    """The configuration file read, or None."""
    settings: Mapping[str, Setting] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()

    def require_api(self) -> tuple[Secret, str]:
        """The two tokens; ConfigError naming what is missing when API mode lacks one.

        The auth token stays a Secret: ``api.headers`` reveals it into the header it sends.
        """
        if not self.auth_token or not self.agent_token:
            missing = [AUTH_TOKEN] if not self.auth_token else []
            missing += [AGENT_TOKEN] if not self.agent_token else []
            where = (
                f"in {self.file} or the environment"
                if self.file
                else "in environment.txt or the environment (no environment.txt was found)"
            )
            # Not ``--targets FILE`` alone: ``run`` has no such option (issue 22).
            raise ConfigError(
                f"{' and '.join(missing)} must be set {where} to use the TrackSSL API; "
                "without an account, check-once --targets FILE probes the targets of a file"
            )
        return self.auth_token, self.agent_token

    def describe(self) -> list[tuple[str, str, str]]:
        """``(key, value, origin)`` rows, one per keyed setting; secrets masked by their type."""
        rows: list[tuple[str, str, str]] = []
        for row in settings.KEYED:
            key = row.key or ""
            setting = self.settings.get(key)
            value = setting.value if setting else row.default
            origin = setting.origin if setting else "default"
            held = getattr(self, row.name)
            if row.secret:
                value = f"{held} ({len(held)} characters)" if held else "(not set)"
            elif row.kind is Kind.DIR:
                value = str(held)
            elif value == "":
                value = "(not set)"
            rows.append((key, log.printable(value), log.printable(origin)))
        file = log.printable(str(self.file)) if self.file else "(none found)"
        rows.append((CONFIG_KEY, file, "lookup"))
        return rows


def _suggest(key: str) -> str:
    if len(key) > 64:
        return ""  # difflib is quadratic; no key is that long
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def _from_file(lines: list[Line], file: Path | None, warnings: list[str]) -> dict[str, Setting]:
    """The file's settings; within it a key beats its alias (TRACKSSL_SLEEP_DURATION)."""
    chosen: dict[str, Setting] = {}
    aliased: dict[str, Setting] = {}
    base = file.parent if file else None
    for line in lines:
        if not line.key.startswith("TRACKSSL_"):
            continue  # the Docker agent's file may hold other variables
        where = f"{file}, line {line.number}"
        alias_of = settings.ALIASES.get(line.key)
        if alias_of is not None and alias_of.key:
            origin = f"{where} ({line.key})"
            aliased[alias_of.key] = Setting(alias_of.key, line.value, Source.FILE, origin, base)
        elif line.key == CONFIG_KEY:
            warnings.append(f"{where}: {CONFIG_KEY} has no effect inside the file")
        elif line.key not in DEFAULTS:
            warnings.append(f"{where}: unknown key {line.key}{_suggest(line.key)}")
        else:
            if line.key in chosen:
                warnings.append(f"{where}: {line.key} is set again; the last line wins")
            chosen[line.key] = Setting(line.key, line.value, Source.FILE, where, base)
    return {**aliased, **chosen}


def _merge(
    *,
    options: Mapping[str, str | None],
    environ: Mapping[str, str],
    from_file: dict[str, Setting],
    warnings: list[str],
    said: frozenset[str] = frozenset(),
) -> dict[str, Setting]:
    """Pick each key's value by precedence: option > environment > file. An unknown name
    the file's warnings already name (``said``: its variables exported as well, as with
    ``set -a; . environment.txt``) is not warned about again."""
    chosen = dict(from_file)
    for name, value in environ.items():
        if not name.startswith("TRACKSSL_") or name == CONFIG_KEY:
            continue
        alias_of = settings.ALIASES.get(name)
        if alias_of is not None and alias_of.key:
            if alias_of.key not in environ:
                origin = f"${name}"
                chosen[alias_of.key] = Setting(
                    alias_of.key, value.strip(), Source.ENVIRONMENT, origin
                )
        elif name not in DEFAULTS:
            if name not in said:  # the file's line said it already: once is enough
                warnings.append(f"environment variable {name} is unknown{_suggest(name)}")
        else:
            chosen[name] = Setting(name, value.strip(), Source.ENVIRONMENT, f"${name}")
    for key, option in options.items():
        if option is not None:
            flag = settings.BY_KEY[key].option or key
            chosen[key] = Setting(key, str(option), Source.OPTION, flag)
    return chosen


def load(
    *,
    options: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str],
    config_option: Path | None = None,
    cwd: Path,
    executable: Path | None = None,
    platform: str = sys.platform,
    read_text: Callable[[Path], str] | None = None,
) -> Config:
    """Build the effective Config; ConfigError (exit 3) for any bad input.

    ``options`` maps keys (``TRACKSSL_TIMEOUT``) to command-line values, None when the
    option was not given.
    """
    file = find_file(option=config_option, environ=environ, cwd=cwd, executable=executable)
    lines: list[Line] = []
    if file is not None:
        try:
            text = (read_text or read_file_text)(file)
        except OSError as exc:
            raise unreadable(file, exc) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: not UTF-8 text; save the file as UTF-8") from None
        lines = parse_lines(text, source=str(file))
    warnings: list[str] = []
    chosen = _merge(
        options=options or {},
        environ=environ,
        from_file=_from_file(lines, file, warnings),
        warnings=warnings,
        said=frozenset(line.key for line in lines if line.key not in KNOWN_KEYS),
    )
    values = _validate(chosen, environ=environ, cwd=cwd, platform=platform)
    token = chosen.get(AUTH_TOKEN)
    if token is not None and token.source is Source.FILE and file is not None:
        warning = token_file_warning(file, platform=platform)
        if warning:
            warnings.append(warning)
    # The raw text of a secret goes: from here on only its Secret holds it.
    kept = {
        key: dataclasses.replace(s, value=log.REDACTED) if settings.BY_KEY[key].secret else s
        for key, s in chosen.items()
    }
    return Config(**values, file=file, settings=kept, warnings=tuple(warnings))  # type: ignore[arg-type]


def _where(setting: Setting) -> str:
    if setting.source is Source.FILE:
        return f"{setting.origin}: {setting.key}"
    if setting.source is Source.ENVIRONMENT:
        return f"environment variable {setting.origin.lstrip('$')}"
    return f"option {setting.origin}"


def _value(chosen: Mapping[str, Setting], key: str) -> Setting:
    return chosen.get(key) or Setting(key, DEFAULTS[key], Source.DEFAULT, "default")


def _path(setting: Setting, cwd: Path) -> Path | None:
    if not setting.value:
        return None
    path = Path(setting.value).expanduser()
    if not path.is_absolute():
        path = (setting.base or cwd) / path
    return path


def _shown_value(row: Spec, value: str) -> str:
    """A bad value for a message, unless it may be a secret: a URL with user-info, query
    or fragment, or any long value that is not a path."""
    if row.kind in settings.PATH_KINDS:
        if len(value) > _SHOWN_CHARS:
            return repr(value[:_SHOWN_CHARS]) + "..."
        return repr(value)
    if row.kind is Kind.URL and ("://" not in value or any(char in value for char in "@?#")):
        return "a value not shown (it may hold a password or token)"
    if row.kind is Kind.URL or len(value) <= _SHORT:
        return repr(value) if len(value) <= _SHOWN_CHARS else repr(value[:_SHOWN_CHARS]) + "..."
    return f"a value of {len(value)} characters (not shown: it may be a token)"


def _quoted(row: Spec) -> bool:
    """Whether a bad value of ``row`` may be quoted back at all."""
    return not row.secret and row.kind not in {Kind.TOKEN, Kind.ALLOW}


def _convert_path(
    row: Spec, setting: Setting, cwd: Path, environ: Mapping[str, str], platform: str
) -> Path | None:
    """A path setting's value; ValueError saying what is expected."""
    path = _path(setting, cwd)
    if row.kind is Kind.DIR:
        return path or default_state_dir(environ=environ, platform=platform)
    if path is None:
        return None
    problem = check_log_file(path) if row.kind is Kind.LOG_FILE else None
    if row.kind is Kind.FILE and not path.is_file():
        problem = settings.expected(row)
    if problem:
        raise ValueError(problem)
    return path


def _validate(
    chosen: Mapping[str, Setting],
    *,
    environ: Mapping[str, str],
    cwd: Path,
    platform: str,
    rows: tuple[Spec, ...] = settings.KEYED,
) -> dict[str, object]:
    """Each keyed setting's value by its row's kind; ConfigError for the first bad one."""

    def fail(key: str, expected: str, *, show: bool = True) -> ConfigError:
        setting = _value(chosen, key)
        got = f", got {_shown_value(settings.BY_KEY[key], setting.value)}" if show else ""
        return ConfigError(f"{_where(setting)}: expected {expected}{got}")

    for key in (key for key, setting in chosen.items() if _CONTROL.search(setting.value)):
        # Not shown: it may be a token, and its control characters would reach the terminal.
        raise fail(key, "a value without NUL or other control characters", show=False)
    values: dict[str, object] = {}
    for row in rows:
        key = row.key or ""
        setting = _value(chosen, key)
        value: object
        try:
            if row.kind in settings.PATH_KINDS:
                value = _convert_path(row, setting, cwd, environ, platform)
            else:
                value = settings.convert(row, setting.value)
        except ValueError as exc:
            raise fail(key, str(exc), show=_quoted(row)) from None
        values[row.name] = Secret(value) if row.secret and isinstance(value, str) else value
    return values


def from_process(
    *, config_option: Path | None, options: Mapping[str, str | float | int | Path | None]
) -> Config:
    """``load`` for this process: its environment, working directory and executable."""
    return load(
        options={k: None if v is None else str(v) for k, v in options.items()},
        environ=os.environ,
        config_option=config_option,
        cwd=Path.cwd(),
        executable=frozen_executable(),
    )


def from_environment(
    names: tuple[str, ...], *, options: Mapping[str, str | float | Path | None]
) -> dict[str, object]:
    """The values of settings ``names`` from these options (by setting name) over the process
    environment, for a command that reads no configuration file (``probe``); ConfigError
    (exit 3) for a bad one. Other settings in the environment are not looked at."""
    rows = tuple(settings.spec(name) for name in names)
    keys = {row.key for row in rows}
    environ = {key: value for key, value in os.environ.items() if key in keys}
    given = {settings.spec(n).key or n: None if v is None else str(v) for n, v in options.items()}
    chosen = _merge(options=given, environ=environ, from_file={}, warnings=[])
    cwd = Path.cwd()
    return _validate(chosen, environ=environ, cwd=cwd, platform=sys.platform, rows=rows)


def start_logging(config: Config) -> None:
    """Set up logging as ``config`` says, then log its warnings (once, there).

    ConfigError (exit 3, before anything is contacted) when the log file cannot be opened.
    """
    try:
        logger = log.setup_logging(
            level=config.log_level, file=config.log_file, fmt=config.log_format
        )
    except LogFileError as exc:
        raise ConfigError(f"{_where(_value(config.settings, LOG_FILE))}: {exc}") from None
    except OSError as exc:
        where = _where(_value(config.settings, LOG_FILE))
        raise ConfigError(
            f"{where}: cannot open {config.log_file}: {exc.strerror or exc}; "
            "choose a file this user can write"
        ) from None
    for warning in config.warnings:
        logger.warning("%s", warning)
    logger.debug("configuration: %s", ", ".join(f"{k}={v} ({o})" for k, v, o in config.describe()))
