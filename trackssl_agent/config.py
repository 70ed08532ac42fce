"""Configuration (SPEC section 3): environment.txt, the process environment and options
merged into one frozen ``Config``, each value remembering where it came from.

Nothing here logs: problems that are not fatal come back as ``Config.warnings`` for the
caller to log once logging is set up (logging is itself configured from this file).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from trackssl_agent import allow, log
from trackssl_agent.errors import ConfigError

FILE_NAME = "environment.txt"
APP_NAME = "trackssl-agent"
MIN_INTERVAL = 60.0
MAX_INTERVAL = 30 * 86400.0
"""30 days: longer would leave certificates unwatched, and the scheduler's arithmetic on
huge intervals overflows."""
MAX_FILE_BYTES = 1024 * 1024
"""environment.txt is a dozen lines; a bigger file is the wrong file."""
_SHOWN_CHARS = 60
"""At most this much of a bad value is quoted back in a message."""

AUTH_TOKEN = "TRACKSSL_AUTH_TOKEN"  # noqa: S105 - a key name, not a secret
AGENT_TOKEN = "TRACKSSL_AGENT_TOKEN"  # noqa: S105 - a key name
URL = "TRACKSSL_URL"
INTERVAL = "TRACKSSL_INTERVAL"
INTERVAL_ALIAS = "TRACKSSL_SLEEP_DURATION"
CONCURRENCY = "TRACKSSL_CONCURRENCY"
TIMEOUT = "TRACKSSL_TIMEOUT"
CA_BUNDLE = "TRACKSSL_CA_BUNDLE"
ALLOW = "TRACKSSL_ALLOW"
STATE_DIR = "TRACKSSL_STATE_DIR"
LOG_FILE = "TRACKSSL_LOG_FILE"
LOG_LEVEL = "TRACKSSL_LOG_LEVEL"
LOG_FORMAT = "TRACKSSL_LOG_FORMAT"
CONFIG = "TRACKSSL_CONFIG"

DEFAULTS: dict[str, str] = {
    AUTH_TOKEN: "",
    AGENT_TOKEN: "",
    URL: "https://app.trackssl.com",
    INTERVAL: "4h",
    CONCURRENCY: "64",
    TIMEOUT: "10",
    CA_BUNDLE: "",
    ALLOW: "",
    STATE_DIR: "",
    LOG_FILE: "",
    LOG_LEVEL: "info",
    LOG_FORMAT: "text",
}
KEYS = tuple(DEFAULTS)
KNOWN_KEYS = (*KEYS, INTERVAL_ALIAS, CONFIG)

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_AGENT_TOKEN = re.compile(r"^[A-Za-z0-9._~-]+$")
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""Control characters (tab aside) that no value may hold: a NUL in a path is a crash
later, an escape sequence in a value reaches the terminal."""
_COMMENT = re.compile(r"\s#")


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
    value: str
    source: Source
    origin: str
    """``--timeout``, ``$TRACKSSL_TIMEOUT``, ``/etc/x/environment.txt, line 4`` or ``default``."""
    base: Path | None = None
    """Directory relative paths are resolved against."""


@dataclass(frozen=True)
class Config:
    """The effective configuration; build it with ``load``."""

    auth_token: str | None
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
    file: Path | None
    """The configuration file read, or None."""
    settings: Mapping[str, Setting] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # A dataclass repr would print the token into any traceback or debug line.
        return f"Config(url={self.url!r}, file={self.file!s}, auth_token=[REDACTED])"

    def require_api(self) -> tuple[str, str]:
        """The two tokens; ConfigError naming what is missing when API mode lacks one."""
        missing = [
            key
            for key, value in ((AUTH_TOKEN, self.auth_token), (AGENT_TOKEN, self.agent_token))
            if not value
        ]
        if missing:
            where = f"in {self.file}" if self.file else "(no environment.txt was found)"
            raise ConfigError(
                f"{' and '.join(missing)} must be set for the TrackSSL API {where}; "
                "or use --targets FILE for local mode without an account"
            )
        assert self.auth_token and self.agent_token
        return self.auth_token, self.agent_token

    def describe(self) -> list[tuple[str, str, str]]:
        """``(key, value, origin)`` rows with the auth token redacted."""
        rows: list[tuple[str, str, str]] = []
        for key in KEYS:
            setting = self.settings.get(key)
            value = setting.value if setting else DEFAULTS[key]
            origin = setting.origin if setting else "default"
            if key == AUTH_TOKEN:
                value = f"{log.REDACTED} ({len(value)} characters)" if value else "(not set)"
            elif key == STATE_DIR:
                value = str(self.state_dir)
            elif value == "":
                value = "(not set)"
            rows.append((key, log.printable(value), log.printable(origin)))
        file = log.printable(str(self.file)) if self.file else "(none found)"
        rows.append((CONFIG, file, "lookup"))
        return rows


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
        if not option.is_file():
            raise ConfigError(f"--config {option}: no such file")
        return option
    named = environ.get(CONFIG)
    if named:
        if "\0" in named:
            raise ConfigError(f"${CONFIG}: expected a path without NUL characters")
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"${CONFIG}={named}: no such file")
        return path
    for candidate in (cwd / FILE_NAME, executable.parent / FILE_NAME if executable else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


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


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``4h``, ``1d``, ``1h30m`` or bare seconds -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        raise ValueError("empty")
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(compact):
        raise ValueError(text)
    # 400 nines are inf as a float: the caller's bound refuses it like any huge value.
    return total if math.isfinite(total) else math.inf


def _suggest(key: str) -> str:
    if len(key) > 64:
        return ""  # difflib is quadratic; no key is that long
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def _merge(
    *,
    options: Mapping[str, str | None],
    environ: Mapping[str, str],
    lines: list[Line],
    file: Path | None,
    warnings: list[str],
) -> dict[str, Setting]:
    """Pick each key's value by precedence: option > environment > file.

    Within one source ``TRACKSSL_INTERVAL`` beats its alias ``TRACKSSL_SLEEP_DURATION``.
    """
    from_file: dict[str, Setting] = {}
    alias: Setting | None = None
    base = file.parent if file else None
    for line in lines:
        if not line.key.startswith("TRACKSSL_"):
            continue  # the Docker agent's file may hold other variables
        where = f"{file}, line {line.number}"
        setting = Setting(line.key, line.value, Source.FILE, where, base)
        if line.key == INTERVAL_ALIAS:
            alias = Setting(INTERVAL, line.value, Source.FILE, f"{where} ({INTERVAL_ALIAS})", base)
        elif line.key == CONFIG:
            warnings.append(f"{where}: {CONFIG} has no effect inside the file")
        elif line.key not in DEFAULTS:
            warnings.append(f"{where}: unknown key {line.key}{_suggest(line.key)}")
        else:
            if line.key in from_file:
                warnings.append(f"{where}: {line.key} is set again; the last line wins")
            from_file[line.key] = setting
    if alias is not None and INTERVAL not in from_file:
        from_file[INTERVAL] = alias
    chosen = dict(from_file)
    for name, value in environ.items():
        if not name.startswith("TRACKSSL_") or name == CONFIG:
            continue
        if name == INTERVAL_ALIAS:
            if INTERVAL not in environ:
                chosen[INTERVAL] = Setting(INTERVAL, value.strip(), Source.ENVIRONMENT, f"${name}")
        elif name not in DEFAULTS:
            warnings.append(f"environment variable {name} is unknown{_suggest(name)}")
        else:
            chosen[name] = Setting(name, value.strip(), Source.ENVIRONMENT, f"${name}")
    for key, option in options.items():
        if option is not None:
            flag = "--" + key.removeprefix("TRACKSSL_").lower().replace("_", "-")
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
            text = (read_text or _read_text)(file)
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read it: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: not UTF-8 text; save the file as UTF-8") from None
        lines = parse_lines(text, source=str(file))
    warnings: list[str] = []
    settings = _merge(
        options=options or {}, environ=environ, lines=lines, file=file, warnings=warnings
    )
    token = settings.get(AUTH_TOKEN)
    if token is not None:
        log.register_secret(token.value)
    config = _validate(
        settings, environ=environ, cwd=cwd, platform=platform, file=file, warnings=warnings
    )
    if token is not None and token.source is Source.FILE and file is not None:
        warning = token_file_warning(file, platform=platform)
        if warning:
            warnings.append(warning)
    return dataclasses.replace(config, warnings=tuple(warnings))


def _read_text(path: Path) -> str:
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


def _where(setting: Setting) -> str:
    if setting.source is Source.FILE:
        return f"{setting.origin}: {setting.key}"
    if setting.source is Source.ENVIRONMENT:
        return f"environment variable {setting.origin.lstrip('$')}"
    return f"option {setting.origin}"


def _value(settings: Mapping[str, Setting], key: str) -> Setting:
    return settings.get(key) or Setting(key, DEFAULTS[key], Source.DEFAULT, "default")


def _path(setting: Setting, cwd: Path) -> Path | None:
    if not setting.value:
        return None
    path = Path(setting.value).expanduser()
    if not path.is_absolute():
        path = (setting.base or cwd) / path
    return path


def _shown(value: str) -> str:
    """``value`` quoted for a message: escaped, and cut short when long."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + "..."
    return repr(value)


_PATH_KEYS = frozenset({CA_BUNDLE, STATE_DIR, LOG_FILE})
_SHORT = 16
"""Longest bad value of a number, duration or name quoted back: anything longer may be a
token pasted on the wrong line."""


def _shown_value(key: str, value: str) -> str:
    """A bad value for a message, unless it may be a secret: a URL with user-info, query
    or fragment, or any long value that is not a path."""
    if key in _PATH_KEYS:
        return _shown(value)
    if key == URL:
        if "://" not in value or any(char in value for char in "@?#"):
            return "a value not shown (it may hold a password or token)"
        return _shown(value)
    if len(value) <= _SHORT:
        return repr(value)
    return f"a value of {len(value)} characters (not shown: it may be a token)"


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


def check_url(text: str) -> str:
    """The base URL without a trailing slash; ValueError unless https or loopback http.

    The ValueError's text never repeats the URL: user-info would be a password.
    """
    usage = "an https:// URL such as https://app.trackssl.com"
    if any(char.isspace() or not char.isprintable() for char in text):
        raise ValueError(usage)
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError(usage) from None
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError(usage)
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ValueError("a base URL without user, query or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("a port number between 0 and 65535") from None
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            "https; plain http is allowed only to a loopback host (127.0.0.1, ::1, localhost)"
        )
    return text.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _number(text: str, kind: Callable[[str], float]) -> float:
    """``kind(text)``, or nan (outside every range) when it is not a number."""
    try:
        return kind(text)
    except ValueError:
        return math.nan


def _interval_expected(interval: float) -> str:
    if interval < MIN_INTERVAL:
        return "a duration of at least 1 minute"
    if interval > MAX_INTERVAL:
        return "a duration of at most 30 days (30d)"
    return "a duration such as 90s, 30m, 4h or 1d"


def _validate(
    settings: Mapping[str, Setting],
    *,
    environ: Mapping[str, str],
    cwd: Path,
    platform: str,
    file: Path | None,
    warnings: list[str],
) -> Config:
    def fail(key: str, expected: str, *, show: bool = True) -> ConfigError:
        setting = _value(settings, key)
        got = ""
        if show:
            got = f", got {_shown_value(key, setting.value)}"
        return ConfigError(f"{_where(setting)}: expected {expected}{got}")

    for key in (key for key, setting in settings.items() if _CONTROL.search(setting.value)):
        # Not shown: it may be a token, and its control characters would reach the terminal.
        raise fail(key, "a value without NUL or other control characters", show=False)
    auth = _value(settings, AUTH_TOKEN).value
    if auth and not _TOKEN_CHARS.match(auth):
        raise fail(AUTH_TOKEN, "a token without spaces or control characters", show=False)
    agent = _value(settings, AGENT_TOKEN).value
    if agent and not _AGENT_TOKEN.match(agent):
        raise fail(AGENT_TOKEN, "letters, digits, '.', '_', '~' or '-' only", show=False)
    try:
        url = check_url(_value(settings, URL).value)
    except ValueError as exc:
        raise fail(URL, str(exc)) from None
    try:
        interval = parse_duration(_value(settings, INTERVAL).value)
    except ValueError:
        interval = math.nan
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise fail(INTERVAL, _interval_expected(interval))
    concurrency = _number(_value(settings, CONCURRENCY).value, int)
    if not 1 <= concurrency <= 1024:
        raise fail(CONCURRENCY, "a whole number from 1 to 1024")
    timeout = _number(_value(settings, TIMEOUT).value, float)
    if not 0.1 <= timeout <= 600:  # also refuses nan and inf
        raise fail(TIMEOUT, "seconds between 0.1 and 600")
    ca_bundle = _path(_value(settings, CA_BUNDLE), cwd)
    if ca_bundle is not None and not ca_bundle.is_file():
        raise fail(CA_BUNDLE, "a PEM file of CA certificates that exists")
    try:
        allowed = allow.parse(_value(settings, ALLOW).value)
    except ValueError as exc:
        raise fail(ALLOW, f"comma-separated CIDRs and host globs ({exc})", show=False) from None
    state_dir = _path(_value(settings, STATE_DIR), cwd) or default_state_dir(
        environ=environ, platform=platform
    )
    log_file = _path(_value(settings, LOG_FILE), cwd)
    problem = check_log_file(log_file) if log_file is not None else None
    if problem:
        raise fail(LOG_FILE, problem)
    level = _value(settings, LOG_LEVEL).value.lower()
    if level not in log.LEVELS:
        raise fail(LOG_LEVEL, "one of " + ", ".join(log.LEVELS))
    fmt = _value(settings, LOG_FORMAT).value.lower()
    if fmt not in log.FORMATS:
        raise fail(LOG_FORMAT, "one of " + ", ".join(log.FORMATS))
    return Config(
        auth_token=auth or None,
        agent_token=agent or None,
        url=url,
        interval=interval,
        concurrency=int(concurrency),
        timeout=timeout,
        ca_bundle=ca_bundle,
        allow=allowed,
        state_dir=state_dir,
        log_file=log_file,
        log_level=level,
        log_format=fmt,
        file=file,
        settings=dict(settings),
        warnings=tuple(warnings),
    )


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


def start_logging(config: Config) -> None:
    """Set up logging as ``config`` says, then log its warnings (once, there).

    ConfigError (exit 3, before anything is contacted) when the log file cannot be opened.
    """
    try:
        logger = log.setup_logging(
            level=config.log_level, file=config.log_file, fmt=config.log_format
        )
    except OSError as exc:
        where = _where(_value(config.settings, LOG_FILE))
        raise ConfigError(
            f"{where}: cannot open {config.log_file}: {exc.strerror or exc}; "
            "choose a file this user can write"
        ) from None
    for warning in config.warnings:
        logger.warning("%s", warning)
    logger.debug("configuration: %s", ", ".join(f"{k}={v} ({o})" for k, v, o in config.describe()))
