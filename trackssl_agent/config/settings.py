"""The settings table: each setting declared once, with its key (the environment variable and
the environment.txt key), option, default, type and bounds, secrecy and help text.

The click options (``cli``), the defaults, the ``config`` output and the validation
(``config``) are all generated from ``SETTINGS``; adding a setting is adding a row here.
This module also holds the pure conversions of the table's types (no file system).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import SplitResult, urlsplit

from trackssl_agent import log
from trackssl_agent.base import ascii_values
from trackssl_agent.engine import allow


class Kind(Enum):
    """A setting's type: how its text is checked and turned into a value."""

    TOKEN = "token"  # noqa: S105 - a kind name; matched against ``pattern``; never quoted back
    URL = "url"  # https, or http to a loopback host
    DURATION = "duration"  # 90s, 30m, 4h, 1d, 1h30m or bare seconds
    INT = "int"
    SECONDS = "seconds"  # a float
    CHOICE = "choice"
    ALLOW = "allow"  # TRACKSSL_ALLOW's CIDRs and globs
    FILE = "file"  # an existing file
    LOG_FILE = "log-file"  # a file this user can write
    DIR = "dir"  # a directory; empty means the platform's default
    BOOL = "bool"  # true/false, yes/no, on/off, 1/0; an option without a value


PATH_KINDS = frozenset({Kind.FILE, Kind.LOG_FILE, Kind.DIR})


@dataclass(frozen=True)
class Spec:
    """One setting, declared once."""

    name: str
    """The ``Config`` attribute and the option's parameter name."""
    key: str | None
    """Environment variable and environment.txt key; None for an option-only setting."""
    option: str | None
    """The command-line option, or None when only the file and environment set it."""
    kind: Kind
    default: str
    """As it would be written in environment.txt; "" for none."""
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False
    """Masked in ``config`` output, held as a ``Secret``, registered for log redaction."""
    pattern: str = ""
    """For TOKEN: the characters allowed."""
    expected: str = ""
    """For TOKEN: what the message says is expected."""
    alias: str | None = None
    """An older key accepted for the same setting (the Docker agent's name)."""


def _minutes(seconds: float) -> str:
    return "1 minute" if seconds == 60 else f"{seconds / 86400:g} days ({seconds / 86400:g}d)"


SETTINGS: tuple[Spec, ...] = (
    Spec("auth_token", "TRACKSSL_AUTH_TOKEN", None, Kind.TOKEN, "",
         "The account's API token (TrackSSL settings).", secret=True,
         pattern=r"[\x21-\x7e]+", expected="a token without spaces or control characters"),
    Spec("agent_token", "TRACKSSL_AGENT_TOKEN", None, Kind.TOKEN, "",
         "This agent's token (TrackSSL agents page).", pattern=r"[A-Za-z0-9._~-]+",
         expected="letters, digits, '.', '_', '~' or '-' only"),
    Spec("url", "TRACKSSL_URL", None, Kind.URL, "https://app.trackssl.com",
         "The TrackSSL API base URL."),
    Spec("interval", "TRACKSSL_INTERVAL", "--interval", Kind.DURATION, "4h",
         "Time between cycles: 90s, 30m, 4h, 1d; at least 1m.", low=60, high=30 * 86400,
         alias="TRACKSSL_SLEEP_DURATION"),
    Spec("concurrency", "TRACKSSL_CONCURRENCY", "--concurrency", Kind.INT, "64",
         "Probes at once.", low=1, high=1024),
    Spec("timeout", "TRACKSSL_TIMEOUT", "--timeout", Kind.SECONDS, "10",
         "One deadline per target: DNS, connect, STARTTLS, handshake.", low=0.1, high=600),
    Spec("ca_bundle", "TRACKSSL_CA_BUNDLE", None, Kind.FILE, "",
         "CA certificates (PEM) for reaching the API through an inspecting proxy."),
    Spec("allow", "TRACKSSL_ALLOW", None, Kind.ALLOW, "",
         "Comma-separated CIDRs and host globs the agent may contact; empty: any."),
    Spec("state_dir", "TRACKSSL_STATE_DIR", None, Kind.DIR, "",
         "Folder of the outbox and the lock [default: per user or system]."),
    Spec("log_file", "TRACKSSL_LOG_FILE", "--log-file", Kind.LOG_FILE, "",
         "Log to this file, rotated by size [default: stderr]."),
    Spec("log_level", "TRACKSSL_LOG_LEVEL", "--log-level", Kind.CHOICE, "info",
         "How much to log.", choices=log.LEVELS),
    Spec("log_format", "TRACKSSL_LOG_FORMAT", "--log-format", Kind.CHOICE, "text",
         "Log lines as text or JSON.", choices=log.FORMATS),
    Spec("warn_days", None, "--warn-days", Kind.INT, "30",
         "Exit 1 when a certificate expires within this many days.", low=0),
    Spec("crit_days", None, "--crit-days", Kind.INT, "7",
         "Exit 2 when a certificate expires within this many days.", low=0),
    Spec("verify", "TRACKSSL_VERIFY", "--verify", Kind.BOOL, "false",
         "Trust, name and weak-crypto problems are warnings (exit 1), not notes."),
    Spec("ca_file", "TRACKSSL_CA_FILE", "--ca-file", Kind.FILE, "",
         "Extra PEM trust anchors for judging targets [default: the OS trust store only]."),
)  # fmt: skip

CONFIG_KEY = "TRACKSSL_CONFIG"
CONFIG = Spec("config", CONFIG_KEY, "--config", Kind.FILE, "",
              "Configuration file [default: $TRACKSSL_CONFIG, ./environment.txt].")  # fmt: skip
"""Where the other settings are read from: looked up, not merged, so not in SETTINGS."""

BY_NAME = {spec.name: spec for spec in SETTINGS}
KEYED = tuple(spec for spec in SETTINGS if spec.key is not None)
"""The settings environment.txt and the environment can set (``config`` shows these)."""
BY_KEY = {spec.key: spec for spec in KEYED if spec.key is not None}
ALIASES = {spec.alias: spec for spec in KEYED if spec.alias is not None}


def spec(name: str) -> Spec:
    """The row of setting ``name`` (``timeout``)."""
    return BY_NAME[name]


def _key(name: str) -> str:
    key = spec(name).key
    if key is None:
        raise KeyError(name)
    return key


# The keys by name, for code that refers to one setting.
AUTH_TOKEN = _key("auth_token")
AGENT_TOKEN = _key("agent_token")
URL = _key("url")
INTERVAL = _key("interval")
CONCURRENCY = _key("concurrency")
TIMEOUT = _key("timeout")
CA_BUNDLE = _key("ca_bundle")
ALLOW = _key("allow")
STATE_DIR = _key("state_dir")
LOG_FILE = _key("log_file")
LOG_LEVEL = _key("log_level")
LOG_FORMAT = _key("log_format")
VERIFY = _key("verify")
CA_FILE = _key("ca_file")


def expected(row: Spec) -> str:
    """What a message says a good value of ``row`` looks like."""
    if row.kind is Kind.TOKEN:
        return row.expected
    if row.kind is Kind.INT:
        if row.high is None:
            return f"a whole number of at least {row.low:g}"
        return f"a whole number from {row.low:g} to {row.high:g}"
    if row.kind is Kind.SECONDS:
        return f"seconds between {row.low:g} and {row.high:g}"
    if row.kind is Kind.DURATION:
        return "a duration such as 90s, 30m, 4h or 1d"
    if row.kind is Kind.CHOICE:
        return "one of " + ", ".join(row.choices)
    if row.kind is Kind.BOOL:
        return "true or false"
    return {
        Kind.URL: "an https:// URL such as https://app.trackssl.com",
        Kind.ALLOW: "comma-separated CIDRs and host globs",
        Kind.FILE: "a PEM file of CA certificates that exists",
    }.get(row.kind, "a path")


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0", ""})

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", re.IGNORECASE | re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``4h``, ``1d``, ``1h30m`` or bare seconds -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        raise ValueError("empty")
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != position:
            break
        total += (ascii_values.decimal(match.group(1)) or 0.0) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(compact):
        raise ValueError(text)
    # 400 nines are inf as a float: the caller's bound refuses it like any huge value.
    return total if math.isfinite(total) else math.inf


def check_url(text: str) -> str:
    """The base URL without a trailing slash; ValueError unless https or loopback http.

    The ValueError's text never repeats the URL: user-info would be a password.
    """
    usage = expected(BY_NAME["url"])
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
    if parts.path.strip("/"):
        # The agent adds /api/v1/agents/... itself: a path here would make every request a
        # 404, which reads as an unknown agent token (issue 22).
        raise ValueError(
            "a base URL without a path, such as https://app.trackssl.com (the agent adds "
            "/api/v1/... itself)"
        )
    if not _port_ok(parts):
        raise ValueError("a port number between 0 and 65535")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(
            "https; plain http is allowed only to a loopback host (127.0.0.1, ::1, localhost)"
        )
    return text.rstrip("/")


def _port_ok(parts: SplitResult) -> bool:
    """True without a port, or with one from 0 to 65535 in ASCII digits: urlsplit before
    Python 3.11.4 read the port with int(), which takes other digits too."""
    try:
        _ = parts.port
    except ValueError:
        return False
    text = parts.netloc.rpartition("]")[2] if "]" in parts.netloc else parts.netloc
    text = text.partition(":")[2]
    return not text or ascii_values.whole(text, cap=65536) not in (None, 65536)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1): the only hosts
    the API may be reached at over plain http, and never through a proxy."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bounded(row: Spec, value: float) -> float:
    """``value`` when within the row's bounds; nan and inf never are."""
    low = -math.inf if row.low is None else row.low
    high = math.inf if row.high is None else row.high
    if not (low <= value <= high and math.isfinite(value)):
        if row.kind is Kind.DURATION:
            if value < low:
                raise ValueError(f"a duration of at least {_minutes(low)}")
            if value > high:
                raise ValueError(f"a duration of at most {_minutes(high)}")
        raise ValueError(expected(row))
    return value


def _number(row: Spec, text: str, parse: Callable[[str], float | None]) -> float:
    """``text`` parsed as ASCII (see ``ascii_values``) and within the row's bounds."""
    value = parse(text.strip())
    return _bounded(row, math.nan if value is None else value)  # nan: outside every range


def convert(row: Spec, text: str) -> object:
    """The value of ``text`` for a setting of a pure kind (not a path); ValueError saying
    what is expected. An empty token is None (not set)."""
    if row.kind is Kind.TOKEN:
        if not text:
            return None
        if not re.fullmatch(row.pattern, text):
            raise ValueError(row.expected)
        return text
    if row.kind is Kind.URL:
        return check_url(text)
    if row.kind is Kind.INT:
        return int(_number(row, text, ascii_values.whole))
    if row.kind is Kind.SECONDS:
        return _number(row, text, ascii_values.decimal)
    if row.kind is Kind.DURATION:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise ValueError(expected(row)) from None
        return _bounded(row, seconds)
    if row.kind is Kind.CHOICE:
        if text.lower() not in row.choices:
            raise ValueError(expected(row))
        return text.lower()
    if row.kind is Kind.BOOL:
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError(expected(row))
        return word in _TRUE
    if row.kind is Kind.ALLOW:
        try:
            return allow.parse(text)
        except ValueError as exc:
            raise ValueError(f"{expected(row)} ({exc})") from None
    raise TypeError(f"{row.name}: a path is resolved by config, not converted here")


DEFAULT_TIMEOUT = float(spec("timeout").default)
DEFAULT_CONCURRENCY = int(spec("concurrency").default)
