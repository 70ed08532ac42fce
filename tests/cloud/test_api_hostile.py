"""The API cannot hold or poison the agent (issue 9, part 6): one deadline per request,
a bounded retry budget, any JSON one clear error, outside text made printable, skipped
entries summarised. All against the real loopback API of ``tests/api_server.py``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.api_server import AGENT_TOKEN, AUTH_TOKEN, HANG, ApiServer, Reply
from tests.cli_helpers import run_cli
from tests.listeners import closed_port
from tests.tls_servers import running, trickle_server
from trackssl_agent import log
from trackssl_agent.cloud import schema
from trackssl_agent.cloud.api import (
    ApiClient,
    ApiSettings,
    RejectedError,
    ResponseError,
    TransientError,
)
from trackssl_agent.config.secret import Secret
from trackssl_agent.errors import ApiError

DEADLINE = 1.0
SLACK = 0.6
"""What a cut may take beyond its deadline on a loaded 2-core CI machine."""
HOSTILE_BODY = (
    b'{"error": "bad\r\n2026-01-01T00:00:00+0000 ERROR forged line\x1b[2J\x1b]0;owned\x07"}'
)


def client(server_url: str, **overrides: Any) -> ApiClient:
    """A client with a 1 s request deadline and recorded (instant) retry sleeps."""
    fields: dict[str, Any] = {
        "url": server_url,
        "auth_token": Secret(AUTH_TOKEN),
        "agent_token": AGENT_TOKEN,
        "request_deadline": DEADLINE,
        "budget": 10.0,
        "retries": 0,
        **overrides,
    }
    return ApiClient(ApiSettings(**fields), sleep=lambda _s: None, jitter=lambda: 0.5, proxies={})


@pytest.fixture
def clean_env(env: Path) -> Path:
    """``env``'s working directory: no environment.txt and no TRACKSSL_* variables."""
    return env / "work"


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_trickled_answer_is_cut_at_the_request_deadline(
    api_server: ApiServer, headers_too: bool
) -> None:
    """A byte every 0.2 s (each read well inside the read timeout) is cut at the deadline."""
    api_server.fail(
        "domains", Reply.trickled(b'{"data": []}' + b" " * 500, 0.2, headers_too=headers_too)
    )
    started = time.monotonic()
    with client(api_server.url) as c, pytest.raises(TransientError) as caught:
        c.fetch_domains()
    elapsed = time.monotonic() - started
    assert DEADLINE <= elapsed < DEADLINE + SLACK
    assert "no complete answer within 1 s" in str(caught.value)


def test_trickled_tls_handshake_is_cut_at_the_request_deadline() -> None:
    """An https API that trickles its ServerHello is cut at the deadline too."""
    with running(trickle_server(0.2)) as server:
        started = time.monotonic()
        with (
            client(f"https://127.0.0.1:{server.port}") as c,
            pytest.raises(TransientError, match="no complete answer within 1 s"),
        ):
            c.fetch_domains()
    assert time.monotonic() - started < DEADLINE + SLACK


def test_hung_api_gives_up_within_the_budget(api_server: ApiServer) -> None:
    """A hung API with many retries and real sleeps still ends within the budget, in one
    error line that says so."""
    api_server.fail("domains", HANG)
    settings = ApiSettings(
        url=api_server.url, auth_token=Secret(AUTH_TOKEN), agent_token=AGENT_TOKEN,
        request_deadline=DEADLINE, budget=2.5, retries=20, backoff=0.2,
    )  # fmt: skip
    started = time.monotonic()
    with ApiClient(settings, proxies={}) as c, pytest.raises(TransientError) as caught:
        c.fetch_domains()
    elapsed = time.monotonic() - started
    assert elapsed < 2.5 + SLACK
    message = str(caught.value)
    assert "its time limit is 2.5 s" in message
    assert "no complete answer within" in message
    assert "\n" not in message
    assert len(api_server.requests) >= 2


def test_default_deadlines_end_within_two_minutes() -> None:
    """The real defaults: no attempt outlives the budget, and the budget plus one cut's
    latency stays under 2 minutes; each wait fits in one request's deadline."""
    settings = ApiSettings(url="https://x", auth_token=Secret(AUTH_TOKEN), agent_token=AGENT_TOKEN)
    assert settings.budget + 5 <= 120
    assert settings.request_deadline <= settings.budget
    assert settings.connect_timeout <= settings.request_deadline
    assert settings.read_timeout <= settings.request_deadline


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply.nested(100_000), "nested too deeply"),
        (Reply(200, b'{"data": {"a": 1}}'), r'not of the form \{"data": \[...\]\}'),
        (Reply(200, b"[1, 2, 3]"), "not of the form"),
        (Reply(200, b'"data"'), "not of the form"),
        (Reply(200, b'{"data": [' + b"1" * 5000 + b"]}"), "invalid JSON"),
        (Reply(200, b"\xff\xfe\x00garbage"), "invalid JSON"),
        (Reply(200, b'{"data": []}\x1b[2J trailing'), "invalid JSON"),
    ],
    ids=["nested", "data-object", "list", "string", "huge-int", "bytes", "trailing-escape"],
)
def test_any_json_is_one_clear_error(api_server: ApiServer, reply: Reply, expected: str) -> None:
    """Nesting, shape and wrong types of the whole document are one ResponseError line."""
    api_server.fail("domains", reply)
    with client(api_server.url) as c, pytest.raises(ResponseError, match=expected) as caught:
        c.fetch_domains()
    assert str(caught.value).isprintable()


def test_declared_oversize_body_is_refused_before_reading(api_server: ApiServer) -> None:
    """A Content-Length above max_body is refused at the headers, body unread: before the
    request's deadline, where reading the trickled body would take 5,000 s."""
    api_server.fail("domains", Reply.trickled(b"x" * 10_000, 0.5))
    started = time.monotonic()
    with (
        client(api_server.url, max_body=4096) as c,
        pytest.raises(ResponseError, match="larger than"),
    ):
        c.fetch_domains()
    assert time.monotonic() - started < DEADLINE


def test_wrong_entry_types_are_skipped_with_short_reasons(api_server: ApiServer) -> None:
    """Entries of every wrong type are skipped with a short, printable reason."""
    api_server.domains = [
        {"domain_id": [[[[1]]]], "hostname": "a.example", "port": 443},
        {"domain_id": 10**30, "hostname": "a.example", "port": 443},
        {"domain_id": 1, "hostname": "h" * 100_000, "port": 443},
        {"domain_id": 2, "hostname": "a\x1b[2J.example", "port": 443},
        {"domain_id": 3, "hostname": "a.example", "port": "²"},
        {"domain_id": True, "hostname": "a.example", "port": 443},
        {"domain_id": 4, "hostname": "ok.example", "port": 443.0},
        {"domain_id": 5, "hostname": "ok.example", "port": "443"},
    ]
    with client(api_server.url) as c:
        domains, skipped = c.fetch_domains()
    assert [d.domain_id for d in domains] == [5]
    assert skipped.count == 7
    for line in skipped.lines():
        assert line.isprintable()
        assert len(line) < 400
    assert "a huge number" in skipped.lines()[1]


def test_three_million_nulls_are_one_summary(api_server: ApiServer) -> None:
    """3,000,000 ``null`` entries give the first five warnings and one count line."""
    api_server.fail("domains", Reply.nulls(3_000_000))
    with client(api_server.url, request_deadline=30.0) as c:
        domains, skipped = c.fetch_domains()
    assert domains == []
    assert skipped.count == 3_000_000
    lines = skipped.lines()
    assert len(lines) == 6
    assert lines[0] == "domain list entry number 1 (no usable domain_id) skipped: it is None"
    assert lines[-1] == "2999995 more domain list entries skipped (3000000 in all)"


def test_null_flood_through_check_once_prints_a_few_lines(
    api_server: ApiServer,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """check-once against a list of 300,000 nulls writes a handful of lines, not 300,000."""
    for name, value in api_server.env().items():
        monkeypatch.setenv(name, value)
    api_server.fail("domains", Reply.nulls(300_000))
    code, out, err = run_cli(["check-once"], capsys)
    assert code == 0, err
    assert len(err.splitlines()) <= 10
    assert "299995 more domain list entries skipped (300000 in all)" in err
    assert "skipped entries 300000" in out


def test_error_body_cannot_forge_a_log_line(
    api_server: ApiServer,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An API error body with CR, LF and ESC reaches the text log as one escaped line."""
    log_file = clean_env / "agent.log"
    for name, value in api_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRACKSSL_LOG_FILE", str(log_file))
    api_server.domains = [{"domain_id": 7, "hostname": "127.0.0.1", "port": str(closed_port())}]
    api_server.fail("certificate", Reply(422, HOSTILE_BODY))
    code, out, err = run_cli(["check-once", "--timeout", "2"], capsys)
    assert code == 1, err
    text = log_file.read_text()
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\r" not in text
    lines = text.splitlines()
    assert all(line[:4].isdigit() for line in lines), lines
    rejected = [line for line in lines if "refused the result" in line]
    assert len(rejected) == 1
    assert "\\r\\n2026-01-01T00:00:00+0000 ERROR forged line\\x1b[2J" in rejected[0]
    assert "\x1b" not in out + err


def test_rejection_message_is_printable(api_server: ApiServer) -> None:
    """The RejectedError itself carries the body escaped, on one line."""
    api_server.fail("certificate", Reply(422, HOSTILE_BODY))
    with client(api_server.url) as c, pytest.raises(RejectedError) as caught:
        c.post({"domain": {"domain_id": 3}})
    assert str(caught.value).isprintable()
    assert "\\x1b" in str(caught.value)


def test_redirect_location_is_printable(api_server: ApiServer) -> None:
    """A hostile Location header is shown escaped and short."""
    location = "https://x.example/\x1b[2J" + "a" * 500
    api_server.fail("domains", Reply(302, b"", headers=(("Location", location),)))
    with client(api_server.url) as c, pytest.raises(ApiError, match="redirected") as caught:
        c.fetch_domains()
    message = str(caught.value)
    assert message.isprintable()
    assert len(message) < 200


def test_text_log_records_are_one_printable_line(tmp_path: Path) -> None:
    """Any message logged (whatever text it quotes) is one line in the text log."""
    log_file = tmp_path / "agent.log"
    logger = log.setup_logging(file=log_file)
    try:
        logger.warning("greeting %s", "hi\r\nFAKE ERROR line\x1b[31m\u202e")
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("greeting hi\\r\\nFAKE ERROR line\\x1b[31m\\u202e")


def test_auth_token_absent_at_debug_level(
    api_server: ApiServer,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """At --log-level debug, through retries and hostile answers, the token never prints."""
    for name, value in api_server.env().items():
        monkeypatch.setenv(name, value)
    api_server.script("domains", Reply.error(503), Reply(200, AUTH_TOKEN.encode() + b"\n{"))
    code, out, err = run_cli(["check-once", "--log-level", "debug"], capsys)
    assert code == 2
    assert AUTH_TOKEN not in out + err
    assert "invalid JSON" in err


def test_decode_domains_is_pure() -> None:
    """The schema side decodes bytes without a server: the same rules, tested alone."""
    domains, skipped = schema.decode_domains(
        b'{"data": [{"domain_id": 1, "hostname": "a.example", "port": "443"}, null]}'
    )
    assert [d.target.text for d in domains] == ["a.example:443"]
    assert skipped.count == 1
    with pytest.raises(ResponseError, match="HTML page"):
        schema.decode_domains(b"<html><title>x</title></html>", "text/html")
