"""Configuration is validated completely, once (issue 9, part 5): every bad value is exit 3
at start in one line, before anything is contacted, and never repeats a secret. Run as a
user would, through the console entry point."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.api_server import ApiServer
from tests.cli_helpers import run_cli
from trackssl_agent.config import config
from trackssl_agent.errors import ConfigError

PASSWORD = "Pw-9xQz-SECRET"  # noqa: S105 - a test-only secret
TOKEN = "tsk_live_Pasted0Alone1Token2"  # noqa: S105 - a test-only token


@pytest.fixture
def home(env: Path) -> Path:
    """``env``'s working directory: an environment without any TRACKSSL_* variable."""
    return env / "work"


def write_env(home: Path, text: str | bytes) -> Path:
    """``text`` as ./environment.txt, mode 0600."""
    path = home / "environment.txt"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    path.chmod(0o600)
    return path


def refused(args: list[str], capsys: pytest.CaptureFixture[str], *absent: str) -> str:
    """Run ``args``; assert exit 3 with one stderr line and none of ``absent``; return it."""
    code, out, err = run_cli(args, capsys)
    assert code == 3, (out, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("trackssl-agent: ")
    assert "internal error" not in err
    assert err.rstrip("\n").isprintable()
    for secret in absent:
        assert secret not in out + err
    return err


@pytest.mark.parametrize(
    "interval",
    ["1000000000d", "9" * 400, "31d", "720h1s"],
    ids=["1e9d", "400-nines", "31d", "30d+1s"],
)
def test_huge_interval_is_refused_before_any_cycle(
    home: Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], interval: str,
) -> None:  # fmt: skip
    """run --interval past 30 days is exit 3 at start; the API is never contacted."""
    for name, value in api_server.env().items():
        monkeypatch.setenv(name, value)
    err = refused(["run", "--interval", interval], capsys)
    assert "at most 30 days" in err
    assert len(err) < 200
    assert api_server.requests == []


def test_thirty_days_is_accepted(home: Path) -> None:
    """Exactly 30 days is the largest interval accepted."""
    assert config.load(environ={"TRACKSSL_INTERVAL": "30d"}, cwd=home).interval == 30 * 86400


@pytest.mark.parametrize("key", ["TRACKSSL_STATE_DIR", "TRACKSSL_LOG_FILE", "TRACKSSL_CA_BUNDLE"])
@pytest.mark.parametrize("command", [["config"], ["check-once"]])
def test_nul_in_a_path_is_refused(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str,
    command: list[str],
) -> None:
    """A NUL byte in a path of environment.txt is exit 3 naming the key, for config too."""
    monkeypatch.delenv("TRACKSSL_STATE_DIR")  # the file's value must be the one read
    write_env(home, f"{key}=/tmp/a\0b\n")
    err = refused(command, capsys)
    assert f"line 1: {key}: expected a value without NUL" in err


def test_nul_in_config_option_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--config with a NUL byte is exit 3, not a crash in os.stat."""
    code, _out, err = run_cli(["config", "--config", "env\0.txt"], capsys)
    assert code == 3
    assert "'--config': expected a path without NUL" in err
    assert "internal error" not in err


@pytest.mark.parametrize("command", [["config"], ["check-once"]])
def test_log_file_that_is_a_directory(
    home: Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], command: list[str],
) -> None:  # fmt: skip
    """A directory as TRACKSSL_LOG_FILE is exit 3 at start; nothing is contacted."""
    for name, value in api_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRACKSSL_LOG_FILE", str(home))
    err = refused(command, capsys)
    assert "environment variable TRACKSSL_LOG_FILE: expected a file, not a directory" in err
    assert api_server.requests == []


def test_log_file_under_a_regular_file(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log file whose folder is a regular file is exit 3 naming that file."""
    (home / "plain").write_text("x")
    write_env(home, f"TRACKSSL_LOG_FILE={home / 'plain' / 'agent.log'}\n")
    err = refused(["check-once"], capsys)
    assert "is not)" in err
    assert "TRACKSSL_LOG_FILE" in err


def test_url_password_is_never_repeated(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A URL with user-info is refused without repeating the password (file and env)."""
    write_env(home, f"TRACKSSL_URL=https://admin:{PASSWORD}@app.trackssl.com\n")
    err = refused(["check-once"], capsys, PASSWORD, "admin")
    assert "line 1: TRACKSSL_URL: expected a base URL without user" in err
    os.environ["TRACKSSL_URL"] = f"https://admin:{PASSWORD}@host/?token={TOKEN}"
    try:
        refused(["config"], capsys, PASSWORD, TOKEN)
    finally:
        del os.environ["TRACKSSL_URL"]


@pytest.mark.parametrize(
    "line",
    [TOKEN, f"Bearer {TOKEN}=", f"export {TOKEN}+/=abc", f"{TOKEN}+/=="],
    ids=["alone", "bearer", "export", "base64"],
)
def test_pasted_token_line_is_never_echoed(
    home: Path, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    """A token pasted alone on a line is named by file and line number only."""
    write_env(home, f"# TrackSSL\nTRACKSSL_AGENT_TOKEN=a1\n{line}\n")
    err = refused(["config"], capsys, TOKEN)
    assert "environment.txt, line 3: " in err


def test_token_shaped_variable_is_ignored_silently(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``TOKEN==`` is a valid other variable (the Docker file holds some): ignored, unshown."""
    write_env(home, f"{TOKEN}==\n  {TOKEN} = x\n")
    code, out, err = run_cli(["config"], capsys)
    assert code == 0
    assert TOKEN not in out + err


@pytest.mark.parametrize(
    ("entry", "cidr"),
    [("10.*", "10.0.0.0/8"), ("192.168.*.*", "192.168.0.0/16"), ("10.1.*", "10.1.0.0/16"),
     ("172.16.5.*", "172.16.5.0/24")],
)  # fmt: skip
def test_address_glob_in_allow_list_shows_the_cidr(
    home: Path, capsys: pytest.CaptureFixture[str], entry: str, cidr: str
) -> None:
    """TRACKSSL_ALLOW=10.* is refused with the CIDR to write instead."""
    write_env(home, f"TRACKSSL_ALLOW=*.corp.example,{entry}\n")
    err = refused(["config"], capsys)
    assert f"write the network as {cidr}" in err


def test_address_glob_cannot_allow_a_lookalike_name() -> None:
    """The refused reading: 10.* would have allowed 10.attacker.example; a CIDR does not."""
    from trackssl_agent.engine import allow  # noqa: PLC0415 - the unit under test
    from trackssl_agent.engine.targets import parse_target  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"10\.0\.0\.0/8"):
        allow.parse("10.*")
    networks = allow.parse("10.0.0.0/8")
    assert networks is not None
    assert not networks(parse_target("10.attacker.example:443"), "203.0.113.9")
    assert networks(parse_target("10.attacker.example:443"), "10.1.2.3")
    assert allow.parse("*.corp.example,10.*.example") is not None
    with pytest.raises(ValueError, match="matches every host name"):
        allow.parse("*.corp.example,*")


@pytest.mark.parametrize(
    ("key", "value"),
    [("TRACKSSL_TIMEOUT", "nan"), ("TRACKSSL_TIMEOUT", "inf"), ("TRACKSSL_TIMEOUT", "1e999"),
     ("TRACKSSL_TIMEOUT", "0.01"), ("TRACKSSL_TIMEOUT", "601"),
     ("TRACKSSL_CONCURRENCY", "9" * 5000), ("TRACKSSL_CONCURRENCY", "1025"),
     ("TRACKSSL_CONCURRENCY", "0"), ("TRACKSSL_INTERVAL", "nan"), ("TRACKSSL_INTERVAL", "-5m")],
)  # fmt: skip
def test_numbers_out_of_bounds(
    home: Path, capsys: pytest.CaptureFixture[str], key: str, value: str
) -> None:
    """Timeout, concurrency and interval outside their bounds are exit 3, one short line."""
    write_env(home, f"{key}={value}\n")
    err = refused(["config"], capsys)
    assert f"line 1: {key}: expected" in err
    assert len(err) < 300


def test_escape_sequence_in_a_value_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value with ESC is refused, and the escape never reaches the terminal."""
    write_env(home, "TRACKSSL_LOG_LEVEL=info\x1b[2J\n")
    err = refused(["config"], capsys)
    assert "\x1b" not in err
    assert "control characters" in err


def test_long_spaced_value_parses_in_linear_time(home: Path) -> None:
    """``a`` + 80,000 spaces + ``b`` (and after ``export``) parse in far less than the 23 s
    the quadratic parse took (milliseconds; the bound leaves room for a loaded runner)."""
    started = time.monotonic()
    lines = config.parse_lines("TRACKSSL_ALLOW=a" + " " * 80_000 + "b\n", source="e")
    assert lines[0].value == "a" + " " * 80_000 + "b"
    with pytest.raises(ConfigError):
        config.parse_lines("export" + " " * 80_000 + "b\n", source="e")
    with pytest.raises(ConfigError):
        config.parse_lines("export" + " " * 80_000 + "b c=1\n", source="e")
    assert time.monotonic() - started < 5


def test_long_spaced_value_through_the_cli(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's 23-second file is a quick, one-line answer now."""
    write_env(home, "TRACKSSL_URL=a" + " " * 80_000 + "b\n")
    started = time.monotonic()
    err = refused(["config"], capsys)
    assert time.monotonic() - started < 10
    assert "TRACKSSL_URL: expected an https:// URL" in err


def test_oversized_and_non_utf8_files(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file over 1 MiB, and a line that is not UTF-8, are exit 3 naming the file (line)."""
    write_env(home, b"# x\n" * 300_000)
    assert "larger than 1024 KiB" in refused(["config"], capsys)
    write_env(home, b"TRACKSSL_TIMEOUT=3\nTRACKSSL_AUTH_TOKEN=\xff" + TOKEN.encode() + b"\n")
    err = refused(["config"], capsys, TOKEN)
    assert "environment.txt, line 2: not UTF-8 text" in err


def test_config_shows_values_printably(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``config`` never writes a raw control character from a value to the terminal."""
    monkeypatch.delenv("TRACKSSL_STATE_DIR")  # the file's value must be the one shown
    write_env(home, f"TRACKSSL_STATE_DIR={home}/\u202estate\n")
    code, out, err = run_cli(["config"], capsys)
    assert code == 0, err
    assert "\u202e" not in out
    assert "/\\u202estate" in out
