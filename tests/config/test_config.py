"""Configuration: environment.txt lookup and tolerance, precedence, validation, warnings."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trackssl_agent import log
from trackssl_agent.config import config
from trackssl_agent.config.config import Source
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.errors import ConfigError

TOKEN = "tsk_cfg_Zq81LmNp0X"  # noqa: S105 - a test-only token


def load(tmp_path: Path, text: str | None = None, **kwargs: object) -> config.Config:
    """Load with ``text`` as ./environment.txt and an empty environment unless given."""
    if text is not None:
        (tmp_path / "environment.txt").write_text(text, encoding="utf-8", newline="")
        (tmp_path / "environment.txt").chmod(0o600)
    environ = kwargs.pop("environ", {})
    return config.load(environ=environ, cwd=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_tolerates_bom_crlf_export_quotes_comments(tmp_path: Path) -> None:
    """Notepad's BOM and CRLF, export, quotes, spaces around = and comments all parse."""
    text = (
        "\ufeff# TrackSSL agent\r\n"
        "\r\n"
        f"export TRACKSSL_AUTH_TOKEN = '{TOKEN}'\r\n"
        'TRACKSSL_AGENT_TOKEN="agent-1"  # the public id\r\n'
        "  TRACKSSL_TIMEOUT=2.5 # seconds\r\n"
        "OTHER_VARIABLE=ignored\r\n"
    )
    cfg = load(tmp_path, text)
    assert cfg.auth_token is not None
    assert cfg.auth_token.reveal() == TOKEN
    assert cfg.agent_token == "agent-1"  # noqa: S105 - a public id
    assert cfg.timeout == 2.5
    assert cfg.file == tmp_path / "environment.txt"
    assert cfg.warnings == ()


@given(
    key=st.sampled_from(["TRACKSSL_AGENT_TOKEN", "TRACKSSL_ALLOW", "TRACKSSL_LOG_FILE"]),
    value=st.text(
        alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_./*,"),
        min_size=1,
        max_size=30,
    ),
    export=st.booleans(),
    quote=st.sampled_from(["", "'", '"']),
    left=st.sampled_from(["", " ", "\t"]),
    right=st.sampled_from(["", " ", "  "]),
    crlf=st.booleans(),
    bom=st.booleans(),
)
def test_config_line_variants_parse_to_the_same_value(  # noqa: PLR0917 - hypothesis arguments
    key: str,
    value: str,
    export: bool,
    quote: str,
    left: str,
    right: str,
    crlf: bool,
    bom: bool,
) -> None:
    """Every tolerated spelling of a KEY=VALUE line yields exactly VALUE."""
    line = f"{'export ' if export else ''}{key}{left}={right}{quote}{value}{quote}"
    text = ("\ufeff" if bom else "") + "# comment\n" + line + ("\r\n" if crlf else "\n")
    lines = config.parse_lines(text, source="environment.txt")
    assert [(item.key, item.value, item.number) for item in lines] == [(key, value, 2)]


@given(
    amount=st.integers(min_value=0, max_value=10_000),
    unit=st.sampled_from(["", "s", "m", "h", "d", "S", "M", "H", "D"]),
)
def test_durations_parse_in_every_unit(amount: int, unit: str) -> None:
    """``90s``, ``30m``, ``4h``, ``1d`` and bare seconds give seconds."""
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit.lower()]
    assert config.parse_duration(f"{amount}{unit}") == amount * factor


@given(text=st.text(max_size=12))
def test_duration_parser_never_crashes(text: str) -> None:
    """Any text is either a duration or a ValueError, never another exception."""
    try:
        seconds = config.parse_duration(text)
    except ValueError:
        return
    assert seconds >= 0


def test_compound_duration() -> None:
    """``1h30m`` adds up."""
    assert config.parse_duration("1h30m") == 5400


def test_precedence_option_over_environment_over_file_over_default(tmp_path: Path) -> None:
    """Each value comes from the highest source that sets it, and records that source."""
    cfg = load(
        tmp_path,
        "TRACKSSL_TIMEOUT=3\nTRACKSSL_CONCURRENCY=5\nTRACKSSL_LOG_LEVEL=warning\n",
        environ={"TRACKSSL_CONCURRENCY": "6", "TRACKSSL_LOG_LEVEL": "error"},
        options={"TRACKSSL_LOG_LEVEL": "debug", "TRACKSSL_TIMEOUT": None},
    )
    assert (cfg.timeout, cfg.concurrency, cfg.log_level, cfg.log_format) == (3, 6, "debug", "text")
    sources = {key: s.source for key, s in cfg.settings.items()}
    assert sources["TRACKSSL_TIMEOUT"] is Source.FILE
    assert sources["TRACKSSL_CONCURRENCY"] is Source.ENVIRONMENT
    assert sources["TRACKSSL_LOG_LEVEL"] is Source.OPTION
    rows = {key: (value, origin) for key, value, origin in cfg.describe()}
    assert rows["TRACKSSL_TIMEOUT"][1].endswith("environment.txt, line 1")
    assert rows["TRACKSSL_LOG_FORMAT"] == ("text", "default")
    assert rows["TRACKSSL_LOG_LEVEL"] == ("debug", "--log-level")


def test_interval_alias_and_minimum(tmp_path: Path) -> None:
    """TRACKSSL_SLEEP_DURATION is the Docker agent's name for the interval; <1 min is refused."""
    assert load(tmp_path, "TRACKSSL_SLEEP_DURATION=30m\n").interval == 1800
    both = "TRACKSSL_INTERVAL=2h\nTRACKSSL_SLEEP_DURATION=30m\n"
    assert load(tmp_path, both).interval == 7200
    with pytest.raises(ConfigError, match="at least 1 minute"):
        load(tmp_path, "TRACKSSL_INTERVAL=30s\n")


def test_lookup_order(tmp_path: Path) -> None:
    """--config, then $TRACKSSL_CONFIG, then ./environment.txt, then beside the executable."""
    exe_dir = tmp_path / "bin"
    exe_dir.mkdir()
    (exe_dir / "environment.txt").write_text("TRACKSSL_TIMEOUT=4\n")
    work = tmp_path / "work"
    work.mkdir()
    exe = exe_dir / "trackssl-agent"
    assert config.load(environ={}, cwd=work, executable=exe).timeout == 4
    assert config.load(environ={}, cwd=work).file is None
    (work / "environment.txt").write_text("TRACKSSL_TIMEOUT=5\n")
    assert config.load(environ={}, cwd=work, executable=exe).timeout == 5
    named = tmp_path / "named.txt"
    named.write_text("TRACKSSL_TIMEOUT=6\n")
    env = {"TRACKSSL_CONFIG": str(named)}
    assert config.load(environ=env, cwd=work, executable=exe).timeout == 6
    chosen = tmp_path / "chosen.txt"
    chosen.write_text("TRACKSSL_TIMEOUT=7\n")
    assert config.load(environ=env, cwd=work, config_option=chosen).timeout == 7
    with pytest.raises(ConfigError, match=r"--config .*missing\.txt: no such file"):
        config.load(environ={}, cwd=work, config_option=tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="TRACKSSL_CONFIG"):
        config.load(environ={"TRACKSSL_CONFIG": str(tmp_path / "nope")}, cwd=work)


def test_frozen_executable_is_sys_executable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen build looks beside sys.executable; a plain interpreter does not."""
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert config.frozen_executable() is None
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert config.frozen_executable() == Path(sys.executable)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TRACKSSL_TIMEOUT=abc\n", r"line 1: TRACKSSL_TIMEOUT: expected seconds .*'abc'"),
        ("\n\nTRACKSSL_CONCURRENCY=0\n", r"line 3: TRACKSSL_CONCURRENCY: expected a whole number"),
        ("TRACKSSL_INTERVAL=soon\n", r"line 1: TRACKSSL_INTERVAL: expected a duration"),
        ("TRACKSSL_URL=ftp://x\n", r"line 1: TRACKSSL_URL: expected an https:// URL"),
        ("TRACKSSL_URL=http://10.0.0.1\n", r"line 1: TRACKSSL_URL: .*loopback"),
        ("TRACKSSL_URL=https://u:p@h\n", r"TRACKSSL_URL: expected a base URL without user"),
        ("TRACKSSL_LOG_LEVEL=loud\n", r"line 1: TRACKSSL_LOG_LEVEL: expected one of debug"),
        ("TRACKSSL_LOG_FORMAT=xml\n", r"TRACKSSL_LOG_FORMAT: expected one of text, json"),
        ("TRACKSSL_ALLOW=10.0.0.0/8,a b/c\n", r"TRACKSSL_ALLOW: expected comma-separated"),
        ("TRACKSSL_CA_BUNDLE=none.pem\n", r"TRACKSSL_CA_BUNDLE: expected a PEM file"),
        ("TRACKSSL_AGENT_TOKEN=a/b\n", r"TRACKSSL_AGENT_TOKEN: expected letters"),
        ("x\nTRACKSSL_TIMEOUT\n", r"line 1: expected KEY=VALUE"),
        ("TRACKSSL_TIMEOUT='3\n", r"line 1: TRACKSSL_TIMEOUT: the opening ' is never closed"),
        ("1KEY=3\n", r"line 1: the text before '=' is not a valid key"),
    ],
)
def test_bad_input_names_file_line_key_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Each kind of bad input is a ConfigError (exit 3) naming file, line, key, expectation."""
    with pytest.raises(ConfigError, match=expected) as caught:
        load(tmp_path, text)
    assert caught.value.exit_code == 3
    assert "environment.txt" in str(caught.value)


def test_bad_token_value_is_never_quoted(tmp_path: Path) -> None:
    """An invalid auth token (or a pasted token line) is reported without its text."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"TRACKSSL_AUTH_TOKEN={TOKEN} x\n")
    assert "TRACKSSL_AUTH_TOKEN: expected a token without spaces" in str(caught.value)
    assert TOKEN not in str(caught.value)
    with pytest.raises(ConfigError, match="expected KEY=VALUE") as pasted:
        load(tmp_path, f"{TOKEN}\n")
    assert TOKEN not in str(pasted.value)


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    """A bad environment variable is named as such."""
    with pytest.raises(ConfigError, match="environment variable TRACKSSL_TIMEOUT: expected"):
        load(tmp_path, environ={"TRACKSSL_TIMEOUT": "-1"})


def test_unknown_keys_warn_with_the_nearest_known_key(tmp_path: Path) -> None:
    """A misspelt TRACKSSL_* key warns and suggests; other variables are left alone."""
    cfg = load(
        tmp_path,
        "TRACKSSL_AUTH_TOKN=x\nPATH=/bin\n",
        environ={"TRACKSSL_TIMEOUTS": "3", "HOME": "/root"},
    )
    assert any(
        "line 1: unknown key TRACKSSL_AUTH_TOKN; did you mean TRACKSSL_AUTH_TOKEN?" in w
        for w in cfg.warnings
    )
    assert any(
        "TRACKSSL_TIMEOUTS is unknown; did you mean TRACKSSL_TIMEOUT?" in w for w in cfg.warnings
    )
    assert len(cfg.warnings) == 2


def test_url_rules() -> None:
    """https anywhere, http only to loopback; the trailing slash is dropped."""
    assert config.check_url("https://app.trackssl.com/") == "https://app.trackssl.com"
    assert config.check_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert config.check_url("http://[::1]:80") == "http://[::1]:80"
    assert config.check_url("http://localhost") == "http://localhost"
    for bad in ("http://192.168.1.5", "http://app.trackssl.com", "app.trackssl.com", "https://"):
        with pytest.raises(ValueError):
            config.check_url(bad)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_warns_when_the_token_file_is_readable_by_others(tmp_path: Path) -> None:
    """A token in a group/world-readable file warns with the chmod to run; 0600 does not."""
    path = tmp_path / "environment.txt"
    path.write_text(f"TRACKSSL_AUTH_TOKEN={TOKEN}\n")
    path.chmod(0o644)
    cfg = load(tmp_path)
    assert any("readable by other users" in w and "chmod 600" in w for w in cfg.warnings)
    path.chmod(0o600)
    assert load(tmp_path).warnings == ()
    path.chmod(0o644)
    assert load(tmp_path, environ={"TRACKSSL_AUTH_TOKEN": TOKEN}).warnings == ()


def test_token_is_registered_and_never_printed(tmp_path: Path) -> None:
    """Reading the token registers it for redaction; repr and describe() hide it."""
    cfg = load(tmp_path, f"TRACKSSL_AUTH_TOKEN={TOKEN}\n")
    assert log.redact(f"Bearer {TOKEN}") == f"Bearer {log.REDACTED}"
    assert TOKEN not in repr(cfg)
    assert TOKEN not in str(cfg.describe())


def test_require_api_names_missing_tokens(tmp_path: Path) -> None:
    """API mode without tokens is a ConfigError that points at local mode too."""
    with pytest.raises(
        ConfigError, match=r"TRACKSSL_AUTH_TOKEN and TRACKSSL_AGENT_TOKEN.*--targets"
    ):
        load(tmp_path).require_api()


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    """A relative path in environment.txt is relative to that file, not the cwd."""
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "ca.pem").write_text("x")
    (conf / "environment.txt").write_text("TRACKSSL_CA_BUNDLE=ca.pem\nTRACKSSL_STATE_DIR=state\n")
    cfg = config.load(environ={}, cwd=tmp_path, config_option=conf / "environment.txt")
    assert cfg.ca_bundle == conf / "ca.pem"
    assert cfg.state_dir == conf / "state"


def test_default_state_dirs() -> None:
    """The platform's state dir when TRACKSSL_STATE_DIR is not set."""
    assert config.default_state_dir(environ={}, platform="linux", is_root=True) == Path(
        "/var/lib/trackssl-agent"
    )
    assert config.default_state_dir(
        environ={"XDG_STATE_HOME": "/x"}, platform="linux", is_root=False
    ) == Path("/x/trackssl-agent")
    assert config.default_state_dir(
        environ={"LOCALAPPDATA": "C:/Users/a/AppData/Local"}, platform="win32"
    ) == Path("C:/Users/a/AppData/Local/trackssl-agent")


def test_allow_list_is_parsed(tmp_path: Path) -> None:
    """TRACKSSL_ALLOW: CIDRs match addresses, globs match host names."""
    cfg = load(tmp_path, "TRACKSSL_ALLOW=10.0.0.0/8, *.corp.example ,::1\n")
    assert cfg.allow is not None
    named = parse_target("ldap.corp.example:636")
    other = parse_target("www.example.org:443")
    assert cfg.allow(named, "192.0.2.1")
    assert cfg.allow(other, "10.2.3.4")
    assert not cfg.allow(other, "192.0.2.1")
    assert cfg.allow(parse_target("[::1]:443"), "::1")
    assert load(tmp_path, "TRACKSSL_ALLOW=\n").allow is None


def test_allow_list_checks_an_ipv4_mapped_address_as_ipv4(tmp_path: Path) -> None:
    """A resolver's ``::ffff:a.b.c.d`` is the IPv4 address it maps: the IPv4 network that
    holds that address allows it, and no other network does."""
    cfg = load(tmp_path, "TRACKSSL_ALLOW=10.0.0.0/8\n")
    assert cfg.allow is not None
    target = parse_target("dual.example:443")
    assert cfg.allow(target, "::ffff:10.1.2.3")
    assert not cfg.allow(target, "::ffff:192.0.2.1")


def test_start_logging_logs_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Config warnings are logged once logging is set up, to the configured file."""
    log_file = tmp_path / "agent.log"
    cfg = load(tmp_path, f"TRACKSSL_TIMEOT=3\nTRACKSSL_LOG_FILE={log_file}\n")
    config.start_logging(cfg)
    logging.getLogger(log.LOGGER_NAME).handlers[0].flush()
    assert "did you mean TRACKSSL_TIMEOUT?" in log_file.read_text()
