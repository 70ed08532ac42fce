"""No run of 8 or more characters of a secret is ever printed: the redaction alone (partial,
JSON-escaped, URL-encoded and base64 forms; JSON lines stay valid), then real servers that
echo the token (a 400 body cut to a snippet, a redirect's Location cut at 60 characters), a
token holding ``"`` and ``\\`` under ``--log-format json``, and a real proxy whose CONNECT
answer repeats Proxy-Authorization in its reason phrase, at --log-level debug."""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.api_server import AUTH_TOKEN, OK, ApiServer, Reply, domain_entries
from tests.certs import Chain
from tests.cli_helpers import agent_environ, run_cli
from tests.proxy_server import RecordingProxy
from tests.tls_servers import TcpServer
from trackssl_agent import log
from trackssl_agent.base.redaction import REDACTED, Redactor
from trackssl_agent.cloud.api import ApiClient

ROOT = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "trackssl_agent"]
QUOTED_TOKEN = 'tsk"live\\9f3Kq2ZxT7pLmW4vB8nR'  # noqa: S105 - a test-only token with " and \


def runs(secret: str) -> set[str]:
    """Every 8-character run of ``secret``, as is, JSON-escaped and URL-encoded."""
    found: set[str] = set()
    for form in (secret, json.dumps(secret)[1:-1], quote(secret, safe="")):
        found |= {form[i : i + 8] for i in range(len(form) - 7)}
    return found


def assert_no_runs(text: str, *secrets: str) -> None:
    """No 8-character run of any of ``secrets`` (in any of its forms) is in ``text``."""
    for secret in secrets:
        leaked = sorted(run for run in runs(secret) if run in text)
        assert not leaked, f"{leaked} of a secret in:\n{text}"


def basic(user: str, password: str) -> str:
    """The Proxy-Authorization credentials for ``user:password``."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the redaction alone ----------------------------------------------------------------


def test_partial_runs_are_removed_shorter_ones_stay() -> None:
    """Any 8 consecutive characters of a secret are removed, wherever they start; 7 are
    left (the stated bound), and text around them is kept."""
    redactor = Redactor()
    redactor.add(AUTH_TOKEN)
    for start in range(len(AUTH_TOKEN) - 8):
        piece = AUTH_TOKEN[start : start + 8]
        assert redactor.redact(f"say {piece} end") == f"say {REDACTED} end"
    assert redactor.redact(f"head {AUTH_TOKEN[:7]}") == f"head {AUTH_TOKEN[:7]}"
    assert redactor.redact(f"Bearer {AUTH_TOKEN}, again {AUTH_TOKEN[3:20]}!") == (
        f"Bearer {REDACTED}, again {REDACTED}!"
    )


def test_escaped_and_encoded_forms_are_removed() -> None:
    """A token with ``"`` and ``\\`` is removed JSON-escaped, repr-escaped and URL-encoded,
    in part too."""
    redactor = Redactor()
    redactor.add(QUOTED_TOKEN)
    for form in (json.dumps(QUOTED_TOKEN)[1:-1], repr(QUOTED_TOKEN), quote(QUOTED_TOKEN, safe="")):
        out = redactor.redact(f"x={form[:20]}")
        assert_no_runs(out, QUOTED_TOKEN)
        assert REDACTED in out


def test_short_secrets_are_removed_whole() -> None:
    """A secret of 4 to 7 characters is removed where it appears whole; under 4 it is left
    alone (it would blank ordinary words)."""
    redactor = Redactor()
    redactor.add("pa55w")
    redactor.add("ab")
    assert redactor.redact("user:pa55w here, ab") == f"user:{REDACTED} here, ab"


def test_json_lines_stay_valid_json() -> None:
    """Random tokens full of quotes and backslashes, echoed cut at random places inside
    a JSON document: redact_json keeps it valid and leaves no run of the escaped token."""
    rng = random.Random(18)  # noqa: S311 - a repeatable fuzz, not a secret
    alphabet = '"\\ab:, n'  # dense escapes: a cut through one is likely
    for _ in range(2000):
        token = "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 40)))
        redactor = Redactor()
        redactor.add(token)
        start = rng.randint(0, len(token) - 1)
        echo = token[start : rng.randint(start + 1, len(token))]
        around = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3))) for _ in "ab"]
        message = f"seen {around[0]}{echo}{around[1]}"
        document = json.dumps({"message": message, "token-ish": token[:5], "n": 1})
        out = redactor.redact(document, serialized_json=True)
        json.loads(out)  # still valid
        if len(echo) >= 8:
            assert json.dumps(echo)[1:-1] not in out


def test_json_formatter_redacts_before_and_after_escaping() -> None:
    """The JSON log line of a message holding a quoted token's partial echo is valid JSON
    with no run of the token (raw or escaped); so is its text line."""
    log.register_secret(QUOTED_TOKEN)
    for fmt in ("json", "text"):
        stream = io.StringIO()
        logger = log.setup_logging(fmt=fmt, stream=stream, level="debug")
        logger.warning("body: %s", f'{{"seen": "Bearer {QUOTED_TOKEN[:-3]}"}}')
        logger.warning("escaped: %s", json.dumps(QUOTED_TOKEN)[5:])
        text = stream.getvalue()
        assert_no_runs(text, QUOTED_TOKEN)
        if fmt == "json":
            for line in text.splitlines():
                assert_no_runs(json.loads(line)["message"], QUOTED_TOKEN)
    logging.getLogger(log.LOGGER_NAME).handlers.clear()


def test_excerpt_redacts_before_it_cuts() -> None:
    """An excerpt of outside text cut through an echoed token keeps none of it."""
    log.register_secret(AUTH_TOKEN)
    body = "x" * 180 + "Bearer " + AUTH_TOKEN
    shown = log.excerpt(body + "y" * 100, 200)
    assert_no_runs(shown, AUTH_TOKEN)
    assert shown.endswith("...") and len(shown) == 203


def test_a_long_line_without_secrets_is_unchanged() -> None:
    """A megabyte line with no secret comes back as it was (one pass over its windows)."""
    redactor = Redactor()
    redactor.add(AUTH_TOKEN)
    line = "abcdefghij" * 100_000
    assert redactor.redact(line) == line


# -- real servers and processes ----------------------------------------------------------


def agent_env(server: ApiServer, state: Path, **extra: str) -> dict[str, str]:
    """A ``python -m trackssl_agent`` child's environment for ``server``."""
    return agent_environ(
        **server.env(), TRACKSSL_STATE_DIR=str(state), PYTHONPATH=str(ROOT), **extra
    )


def check_once(server: ApiServer, tmp_path: Path, *args: str, **extra: str) -> tuple[int, str]:
    """check-once at debug level with a log file; the exit code and all it printed/wrote."""
    log_file = tmp_path / "agent.log"
    done = subprocess.run(
        [*AGENT, "check-once", "--log-level", "debug", "--log-file", str(log_file), *args],
        env=agent_env(server, tmp_path / "state", **extra), cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr + log_file.read_text()


def test_echo_in_a_400_body_cut_to_a_snippet(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path
) -> None:
    """A 400 whose body repeats the Authorization header where the 200-character snippet
    cuts it: the refusal is logged, no run of the token is."""
    api_server.domains = domain_entries({1: good[0].port})
    prefix = b'{"error": "bad header", "seen": "'
    body = prefix + b"x" * (200 - len(prefix) - 7 - 20) + b'{authorization}"}'
    api_server.fail("certificate", Reply.echoing(400, body))
    code, output = check_once(api_server, tmp_path)
    assert code == 1, output  # a result was rejected
    assert "refused the result for domain_id 1 with HTTP 400" in output
    assert_no_runs(output, AUTH_TOKEN)


def test_echo_in_a_redirect_location(api_server: ApiServer, tmp_path: Path) -> None:
    """A redirect whose Location carries the header (cut at 60 characters when shown):
    the redirect is reported, no run of the token is."""
    api_server.fail(
        "domains", Reply.echoing(302, Location="https://login.example/?next={authorization}")
    )
    code, output = check_once(api_server, tmp_path)
    assert code == 2, output
    assert "redirected the domain list to 'https://login.example/?next=Bearer " in output
    assert_no_runs(output, AUTH_TOKEN)


def test_quoted_token_under_json_logs(good: list[TcpServer], tmp_path: Path) -> None:
    """A token holding ``"`` and ``\\``, echoed whole in a 400 body, with --log-format json:
    every log line is valid JSON, no run of the token (raw or JSON-escaped) anywhere."""
    with ApiServer(auth_token=QUOTED_TOKEN) as server:
        server.domains = domain_entries({1: good[0].port})
        server.fail("certificate", Reply.echoing(400, b'{"seen": "{authorization}"}'))
        code, output = check_once(server, tmp_path, "--log-format", "json")
        assert server.posts(), output
    assert code == 1, output  # a result was rejected
    records = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines()]
    assert any("with HTTP 400" in record["message"] for record in records)
    assert_no_runs(output, QUOTED_TOKEN)
    for record in records:
        assert_no_runs(json.dumps(record, ensure_ascii=False), QUOTED_TOKEN)


PROXY_USER = "agent"
PROXY_PASSWORD = "echoed-proxy-pa55word"  # noqa: S105 - a test-only proxy password


def test_proxy_reason_phrase_echoing_credentials_check_once(
    env: Path, https_api_server: ApiServer, api_chain: Chain,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A proxy answering CONNECT with ``407 Proxy-Authorization: Basic ...``: check-once
    fails naming the 407, and neither the password nor its base64 form shows in any run."""
    with RecordingProxy(echo_auth=True) as proxy:
        for key, value in https_api_server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("TRACKSSL_CA_BUNDLE", str(api_chain.ca_file))
        monkeypatch.setenv("HTTPS_PROXY", proxy.url(PROXY_USER, PROXY_PASSWORD))
        monkeypatch.setattr(ApiClient, "_delay", lambda _self, _attempt: 0.001)
        log_file = env / "agent.log"
        code, out, err = run_cli(
            ["check-once", "--log-level", "debug", "--log-file", str(log_file)], capsys
        )
        assert b"Proxy-Authorization: Basic " in proxy.received  # it did get them
    output = out + err + log_file.read_text()
    assert code == 2, output
    assert "407" in output
    assert_no_runs(output, PROXY_PASSWORD, basic(PROXY_USER, PROXY_PASSWORD), AUTH_TOKEN)


def test_proxy_reason_phrase_echoing_credentials_doctor(
    https_api_server: ApiServer, api_chain: Chain, tmp_path: Path
) -> None:
    """The same proxy under doctor (text and JSON): the proxy step FAILs quoting the 407,
    with the credentials removed."""
    password = "doctor-" + PROXY_PASSWORD
    with RecordingProxy(echo_auth=True) as proxy:
        extra = {
            "TRACKSSL_CA_BUNDLE": str(api_chain.ca_file),
            "HTTPS_PROXY": proxy.url(PROXY_USER, password),
        }
        outputs = []
        for args in ([], ["--json"]):
            done = subprocess.run(
                [*AGENT, "doctor", "--targets-sample", "0", *args],
                env=agent_env(https_api_server, tmp_path / "state", **extra), cwd=tmp_path,
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 2, done.stdout + done.stderr
            outputs.append(done.stdout + done.stderr)
    assert "407" in outputs[0] and "gave no tunnel" in outputs[0], outputs[0]
    json.loads(outputs[1])
    assert_no_runs("\n".join(outputs), password, basic(PROXY_USER, password), AUTH_TOKEN)


def test_domains_ok_after_echoes_do_not_hide_results(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path
) -> None:
    """Redaction removes only secrets: after one echoing 400 a later post is delivered and
    the report line is printed whole."""
    api_server.domains = domain_entries({1: good[0].port, 2: good[1].port})
    api_server.script("certificate", Reply.echoing(400, b"{authorization}"), OK)
    code, output = check_once(api_server, tmp_path)
    assert code == 1, output  # one result was rejected
    assert len(api_server.posted_ids()) == 1
    report = "check-once: domains 2, retrieved 2, failed 0, delivered 1, queued 0, rejected 1"
    assert report in output
    assert_no_runs(output, AUTH_TOKEN)
