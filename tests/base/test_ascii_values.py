"""Values read from outside are parsed by their ASCII grammars: the parser alone with
Unicode digits, then a real API answering ``Retry-After: ²`` (``str.isdigit()`` is true for
it and ``float()`` refuses it) to check-once, run and doctor, then settings and options
given other digits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.api_server import AUTH_TOKEN, OK, ApiServer, Reply, domain_entries
from tests.cli_helpers import run_cli
from tests.tls_servers import TcpServer
from trackssl_agent.base import ascii_values
from trackssl_agent.cloud import api, schema
from trackssl_agent.cloud.transport import declared_too_large
from trackssl_agent.config import config, settings
from trackssl_agent.doctor import api as doctor_api
from trackssl_agent.doctor.values import Status
from trackssl_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "trackssl_agent"]

SUPERSCRIPT = "²"
ARABIC_INDIC = "٣"  # int() and float() take it as 3
FULL_WIDTH = "\uff11\uff12"  # full-width 12: int() takes it
HUGE_YEAR = "Wed, 21 Oct 99999999999999999999 07:28:00 GMT"  # OverflowError in email.utils


@pytest.mark.parametrize(
    "text",
    [SUPERSCRIPT, "¹²", ARABIC_INDIC, FULL_WIDTH, "1_000", " 1", "1 ", "+1", "-1", "", "0x10",
     "1.0", "١٢٣"],
)  # fmt: skip
def test_whole_takes_ascii_digits_only(text: str) -> None:
    """whole() is None for anything but ASCII digits: other Unicode digits, separators,
    signs, spaces."""
    assert ascii_values.whole(text) is None
    assert ascii_values.whole(text, cap=100) is None
    assert not ascii_values.is_digits(text)


def test_whole_values_and_cap() -> None:
    """ASCII digits give their value; leading zeros are fine; the cap bounds any length
    (int()'s 4,300-digit limit is never met)."""
    assert ascii_values.whole("0") == 0
    assert ascii_values.whole("007") == 7
    assert ascii_values.whole("65535") == 65535
    assert ascii_values.whole("9" * 100_000, cap=10) == 10
    assert ascii_values.whole("0" * 100_000 + "5", cap=10) == 5
    assert ascii_values.whole("9" * 100_000) is None
    assert ascii_values.whole("11", cap=10) == 10


@pytest.mark.parametrize(
    "text",
    [SUPERSCRIPT, ARABIC_INDIC, "\u0663.\u0665", FULL_WIDTH, "inf", "nan", "1e3", "-1", "+1",
     "1_0", "2.", "", ".", " 2"],
)  # fmt: skip
def test_decimal_takes_ascii_decimals_only(text: str) -> None:
    """decimal() is None for other digits, inf, nan, exponents, signs and separators."""
    assert ascii_values.decimal(text) is None


def test_decimal_values() -> None:
    """ASCII decimals give their value."""
    assert ascii_values.decimal("2") == 2.0
    assert ascii_values.decimal("2.5") == 2.5
    assert ascii_values.decimal(".5") == 0.5


def test_http_date() -> None:
    """HTTP dates parse (UTC when no zone); other digits, a huge year, an out-of-range
    offset and garbage are None, never an exception."""
    assert ascii_values.http_date("Wed, 21 Oct 2015 07:28:00 GMT") == datetime(
        2015, 10, 21, 7, 28, tzinfo=UTC
    )
    assert ascii_values.http_date("Wed, 21 Oct 2015 07:28:00 -0000") is not None
    bad_dates = [
        "Wed, ٢١ Oct 2015 07:28:00 GMT", HUGE_YEAR, SUPERSCRIPT, "",
        "Wed, 21 Oct 2015 07:28:00 +99999999999999999999", "Wed, 21 Oct 2015 99:28:00",
    ]  # fmt: skip
    for bad in bad_dates:
        assert ascii_values.http_date(bad) is None, bad


def test_retry_after_and_content_length_headers() -> None:
    """Retry-After: seconds or a date, anything else None (the normal backoff); a huge
    number is capped, never an error. Content-Length with other digits is no size."""
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert api.retry_after("120") == 120.0
    assert api.retry_after("9" * 50_000) == 1e9
    assert api.retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now=now) == 60.0
    for bad in [SUPERSCRIPT, "¹²", ARABIC_INDIC, FULL_WIDTH, "1_0", "-5", HUGE_YEAR]:
        assert api.retry_after(bad, now=now) is None, bad
    assert declared_too_large("17", 16)
    assert not declared_too_large("16", 16)
    assert declared_too_large("9" * 10_000, 16)
    assert not declared_too_large("²²", 1)
    assert not declared_too_large(ARABIC_INDIC * 5, 1)


def test_domain_list_numbers_in_other_digits_are_skipped() -> None:
    """A domain_id or port written in other digits is a bad entry, not a number."""
    for entry in [
        {"domain_id": ARABIC_INDIC, "hostname": "a.example", "port": "443"},
        {"domain_id": 1, "hostname": "a.example", "port": "٤٤٣"},
        {"domain_id": 1, "hostname": "a.example", "port": SUPERSCRIPT},
    ]:
        with pytest.raises(ValueError, match="bad"):
            schema.domain_from_entry(entry)


def test_doctor_clock_with_a_date_it_cannot_read() -> None:
    """A Date header with a year past any calendar is a clock warning, not a crash."""
    received = datetime.now(UTC)
    for date in [HUGE_YEAR, "Wed, ٢١ Oct 2015 07:28:00 GMT"]:
        check = doctor_api.clock(doctor_api.Answer(200, date, received))
        assert check.status is Status.WARN
        assert "is not a date" in check.detail


@pytest.mark.parametrize("value", [SUPERSCRIPT, "¹²", HUGE_YEAR])
def test_check_once_backs_off_normally_after_a_bad_retry_after(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path, value: str
) -> None:
    """429 on the domain list and 503 on the post, each with an unreadable Retry-After:
    retried after the normal backoff (0.5 to 1 s), delivered, exit 0, no traceback."""
    api_server.domains = domain_entries({1: good[0].port})
    api_server.script("domains", Reply.error(429, **{"Retry-After": value}), OK)
    api_server.script("certificate", Reply.error(503, **{"Retry-After": value}), OK)
    log_file = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSSL_")}
    env.update(api_server.env(), TRACKSSL_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [*AGENT, "check-once", "--log-level", "debug", "--log-file", str(log_file),
         "--log-format", "json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    output = done.stdout + done.stderr + log_file.read_text()
    assert done.returncode == 0, output
    assert api_server.posted_ids() == [1]
    retries = [r["message"] for r in records if "retry 1 of" in r["message"]]
    assert len(retries) == 2, output
    for message in retries:
        delay = float(message.rsplit(" in ", 1)[1].removesuffix(" s"))
        assert 0.5 <= delay <= 1.0, message
    assert "internal error" not in output
    assert "Traceback" not in output and "exception" not in {k for r in records for k in r}
    assert AUTH_TOKEN not in output


def test_doctor_fails_auth_sensibly_on_a_bad_retry_after(
    env: Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """doctor against a 429 with ``Retry-After: ²``: the auth line FAILs naming HTTP 429,
    exit 2, no internal error."""
    api_server.fail("domains", Reply.error(429, **{"Retry-After": SUPERSCRIPT}))
    for key, value in api_server.env().items():
        monkeypatch.setenv(key, value)
    code, out, err = run_cli(["doctor", "--targets-sample", "0"], capsys)
    assert code == 2, out + err
    auth = next(row for row in out.splitlines() if row[6:].startswith("auth "))
    assert auth.startswith("FAIL") and "HTTP 429" in auth, out
    assert "internal error" not in out + err


def test_run_backs_off_instead_of_failing_the_cycle(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path
) -> None:
    """run with a 503 ``Retry-After: ²`` on the domain list: the cycle retries and delivers;
    no "cycle N failed", no traceback in the log."""
    api_server.domains = domain_entries({1: good[0].port})
    api_server.script("domains", Reply.error(503, **{"Retry-After": SUPERSCRIPT}), OK)
    log_file = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSSL_")}
    env.update(api_server.env(), TRACKSSL_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [*AGENT, "run", "--log-level", "debug", "--log-file", str(log_file)],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        delivered = api_server.wait_for(lambda: api_server.posted_ids() == [1], timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log_file.read_text()
    assert delivered and code == 0, text
    assert "domain list failed (HTTP 503); retry 1 of 4 in" in text
    assert not re.search(r"cycle \d+ failed", text), text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("key", "value"),
    [("TRACKSSL_CONCURRENCY", ARABIC_INDIC), ("TRACKSSL_CONCURRENCY", FULL_WIDTH),
     ("TRACKSSL_CONCURRENCY", "1_0"), ("TRACKSSL_TIMEOUT", ARABIC_INDIC),
     ("TRACKSSL_TIMEOUT", "1e1"), ("TRACKSSL_INTERVAL", ARABIC_INDIC + "m"),
     ("TRACKSSL_INTERVAL", FULL_WIDTH + "h"), ("TRACKSSL_URL", "http://127.0.0.1:\u0668\u0660")],
)  # fmt: skip
def test_settings_in_other_digits_are_refused(tmp_path: Path, key: str, value: str) -> None:
    """A setting written with other digits (or a separator, an exponent) is a
    configuration error naming what is expected, not a number."""
    with pytest.raises(ConfigError, match=f"{key}: expected"):
        config.load(environ={key: value}, cwd=tmp_path)


def test_settings_in_ascii_digits_are_read() -> None:
    """The ASCII forms still convert (spaces around them allowed)."""
    assert settings.convert(settings.spec("concurrency"), " 12 ") == 12
    assert settings.convert(settings.spec("timeout"), "2.5") == 2.5
    assert settings.parse_duration("1h30m") == 5400


@pytest.mark.parametrize(
    "args",
    [["check-once", "--concurrency", ARABIC_INDIC], ["check-once", "--timeout", ARABIC_INDIC],
     ["check-once", "--concurrency", "1_0"], ["doctor", "--targets-sample", FULL_WIDTH]],
)  # fmt: skip
def test_options_in_other_digits_are_usage_errors(
    env: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A numeric option in other digits is a usage error (exit 3) before anything runs."""
    code, _out, err = run_cli(args, capsys)
    assert code == 3, err
    assert "is not a" in err
