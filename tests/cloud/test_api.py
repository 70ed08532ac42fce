"""The API client against a real loopback TrackSSL server: headers, retries, errors, TLS,
proxies, the domain list and the post payload."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.api_server import (
    AGENT_TOKEN,
    AUTH_TOKEN,
    FORBIDDEN,
    HANG,
    HTML_PAGE,
    INVALID_JSON,
    NOT_FOUND,
    OK,
    SERVER_ERROR,
    TIMEOUT_408,
    TOO_MANY,
    UNAUTHORIZED,
    UNAVAILABLE,
    ApiServer,
    Reply,
)
from tests.certs import Chain, make_chain
from tests.listeners import closed_port
from tests.tls_servers import running, server_context, tls_server
from trackssl_agent import __version__
from trackssl_agent.cloud import api, schema
from trackssl_agent.cloud.api import (
    ApiClient,
    ApiSettings,
    AuthError,
    RejectedError,
    ResponseError,
    TransientError,
)
from trackssl_agent.config.secret import Secret
from trackssl_agent.engine.probe import ProbeSettings, probe
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.engine.results import ErrorKind, ProbeError, ProbeResult
from trackssl_agent.errors import ApiError

WRONG_TOKEN = "wrong-secret-value"  # noqa: S105 - a test-only token
UNKNOWN_AGENT = "agent-unknown"


class Sleeps(list[float]):
    """An injected sleep that records instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(server: ApiServer, sleeps: Sleeps | None = None, **overrides: object) -> ApiClient:
    """A client for ``server`` with recorded sleeps and short timeouts."""
    fields: dict[str, object] = {
        "url": server.url,
        "auth_token": Secret(server.auth_token),
        "agent_token": server.agent_token,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "retries": 3,
        "backoff": 1.0,
        **overrides,
    }
    return ApiClient(
        ApiSettings(**fields),  # type: ignore[arg-type]
        sleep=sleeps if sleeps is not None else Sleeps(),
        jitter=lambda: 0.5,
        proxies={},
    )


def test_headers_keepalive_and_user_agent(api_server: ApiServer) -> None:
    """Every request has SPEC section 5's headers and reuses one kept-alive connection."""
    api_server.domains = [{"domain_id": 1, "hostname": "a.example", "port": "443"}]
    with client(api_server) as c:
        c.fetch_domains()
        c.post({"domain": {"domain_id": 1}})
        c.fetch_domains()
    assert len(api_server.requests) == 3
    for request in api_server.requests:
        assert request.headers["Authorization"] == f"Bearer {AUTH_TOKEN}"
        assert request.headers["Accept"] == "application/json"
        assert re.fullmatch(
            rf"trackssl-agent/{re.escape(__version__)} \(\w+; python 3\.\d+\)",
            request.headers["User-Agent"],
        )
    assert api_server.requests[1].headers["Content-Type"] == "application/json"
    assert api_server.requests[0].path == f"/api/v1/agents/{AGENT_TOKEN}/domains.json"
    assert api_server.requests[1].path == f"/api/v1/agents/{AGENT_TOKEN}/certificate.json"
    assert len({r.client_port for r in api_server.requests}) == 1


def test_domain_list_ports_protocols_and_bad_entries(api_server: ApiServer) -> None:
    """Ports as strings or numbers, protocol honoured, unknown fields ignored, bad skipped."""
    entries: list[Any] = [
        {"domain_id": 1, "hostname": "ldap.corp.example", "port": "389", "extra": [1]},
        {"domain_id": 2, "hostname": "mail.corp.example", "port": 2525, "protocol": "smtp"},
        {"domain_id": "3", "hostname": "::1", "port": 8443},
        {"domain_id": 4, "hostname": "web.example", "port": 25, "protocol": "none"},
        {"domain_id": 5, "hostname": "bad host", "port": 443},
        {"domain_id": 6, "hostname": "x.example", "port": "70000"},
        {"domain_id": 7, "hostname": "x.example"},
        {"hostname": "x.example", "port": 443},
        {"domain_id": 8, "hostname": "x.example", "port": 443, "protocol": "gopher"},
        {"domain_id": 1, "hostname": "dup.example", "port": 443},
        "not an object",
    ]
    api_server.domains = entries
    with client(api_server) as c:
        domains, skipped = c.fetch_domains()
    assert [d.domain_id for d in domains] == [1, 2, 3, 4]
    assert domains[0].target.starttls is Protocol.LDAP
    assert domains[0].port == "389"
    assert domains[1].target.starttls is Protocol.SMTP
    assert domains[1].target.port == 2525
    assert domains[2].target.host == "::1"
    assert domains[3].target.starttls is None
    assert skipped.count == 7
    lines = skipped.lines()
    assert len(lines) == 6  # the first five in full, then one count line
    assert lines[0].startswith("domain_id 5 skipped: ")
    assert "domain list entry number 8 (no usable domain_id) skipped" in lines[3]
    assert "gopher" in " ".join(lines)
    assert lines[-1] == "2 more domain list entries skipped (7 in all)"


@pytest.mark.parametrize(("reply", "token"), [(UNAUTHORIZED, "AUTH"), (FORBIDDEN, "AUTH")])
def test_auth_rejection_is_not_retried(api_server: ApiServer, reply: Reply, token: str) -> None:
    """401/403 name the auth token to check and are not retried."""
    api_server.fail("domains", reply)
    sleeps = Sleeps()
    with client(api_server, sleeps) as c, pytest.raises(AuthError, match="TRACKSSL_AUTH_TOKEN"):
        c.fetch_domains()
    assert len(api_server.requests) == 1
    assert sleeps == []


def test_wrong_auth_token_is_refused_by_the_real_check(api_server: ApiServer) -> None:
    """The server's own bearer check answers 401, and the message never holds the token."""
    with (
        client(api_server, auth_token=Secret(WRONG_TOKEN)) as c,
        pytest.raises(AuthError) as caught,
    ):
        c.fetch_domains()
    assert WRONG_TOKEN not in str(caught.value)
    assert api_server.requests[0].status == 401


def test_unknown_agent_token_is_a_404_naming_it(api_server: ApiServer) -> None:
    """404 on domains.json names the agent token to check; no retry."""
    with (
        client(api_server, agent_token=UNKNOWN_AGENT) as c,
        pytest.raises(AuthError, match="TRACKSSL_AGENT_TOKEN 'agent-unknown'"),
    ):
        c.fetch_domains()
    assert len(api_server.requests) == 1
    api_server.script("domains", NOT_FOUND)
    with client(api_server) as c, pytest.raises(AuthError, match="HTTP 404"):
        c.fetch_domains()


def test_retry_after_is_honoured(api_server: ApiServer) -> None:
    """429 waits exactly the Retry-After seconds, then succeeds."""
    api_server.script("domains", TOO_MANY)
    sleeps = Sleeps()
    with client(api_server, sleeps) as c:
        c.fetch_domains()
    assert sleeps == [7.0]
    assert [r.status for r in api_server.requests] == [429, 200]


def test_retry_after_http_date() -> None:
    """A Retry-After HTTP-date becomes the seconds until then."""
    now = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert api.retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30
    assert api.retry_after("garbage") is None


def test_5xx_and_408_back_off_exponentially_with_jitter(api_server: ApiServer) -> None:
    """500, 503 and 408 are retried with doubling, jittered delays, then succeed."""
    api_server.script("certificate", SERVER_ERROR, UNAVAILABLE, TIMEOUT_408)
    sleeps = Sleeps()
    with client(api_server, sleeps, backoff=2.0) as c:
        c.post({"domain": {"domain_id": 1}})
    # equal jitter with random() = 0.5: three quarters of 2, 4, 8
    assert sleeps == [1.5, 3.0, 6.0]
    assert api_server.posted == [{"domain_id": 1}]


def test_jitter_spreads_delays(api_server: ApiServer) -> None:
    """Different random draws give different delays within [d/2, d]."""
    settings = ApiSettings(
        url=api_server.url, auth_token=Secret(AUTH_TOKEN), agent_token=AGENT_TOKEN, backoff=4.0
    )
    low = ApiClient(settings, jitter=lambda: 0.0, proxies={})
    high = ApiClient(settings, jitter=lambda: 1.0, proxies={})
    assert (low._delay(1), high._delay(1)) == (4.0, 8.0)


def test_503_then_200(api_server: ApiServer) -> None:
    """One 503 and the domain list still arrives."""
    api_server.domains = [{"domain_id": 9, "hostname": "a.example", "port": 443}]
    api_server.script("domains", UNAVAILABLE, OK)
    with client(api_server) as c:
        domains, _ = c.fetch_domains()
    assert [d.domain_id for d in domains] == [9]


def test_retries_are_bounded(api_server: ApiServer) -> None:
    """A server that keeps failing gets retries + 1 requests, then a TransientError."""
    api_server.fail("domains", UNAVAILABLE)
    sleeps = Sleeps()
    with client(api_server, sleeps, retries=2) as c, pytest.raises(TransientError, match="503"):
        c.fetch_domains()
    assert len(api_server.requests) == 3
    assert len(sleeps) == 2


def test_hanging_server_hits_the_read_timeout(api_server: ApiServer) -> None:
    """A server that never answers is cut off by the read timeout and retried."""
    api_server.fail("domains", HANG)
    with (
        client(api_server, read_timeout=0.3, retries=1) as c,
        pytest.raises(TransientError, match="timed out"),
    ):
        c.fetch_domains()
    assert len(api_server.requests) == 2


def test_connection_refused_is_retried() -> None:
    """Nothing listening: connection errors are retried, then reported."""
    settings = ApiSettings(
        url=f"http://127.0.0.1:{closed_port()}",
        auth_token=Secret(AUTH_TOKEN),
        agent_token=AGENT_TOKEN,
        retries=2,
    )
    sleeps = Sleeps()
    with (
        ApiClient(settings, sleep=sleeps, proxies={}) as c,
        pytest.raises(TransientError, match="after 3 attempts"),
    ):
        c.fetch_domains()
    assert len(sleeps) == 2


def test_invalid_json_and_html_are_clear_errors(api_server: ApiServer) -> None:
    """Broken JSON and an HTML page are one-line ApiErrors, not tracebacks."""
    api_server.script("domains", INVALID_JSON, HTML_PAGE)
    with client(api_server) as c:
        with pytest.raises(ResponseError, match="invalid JSON"):
            c.fetch_domains()
        with pytest.raises(ResponseError, match="HTML page \\(title 'Proxy login required'\\)"):
            c.fetch_domains()


def test_wrong_json_shape(api_server: ApiServer) -> None:
    """JSON without a data list is a clear error."""
    api_server.script("domains", Reply(200, b'{"domains": []}'))
    with client(api_server) as c, pytest.raises(ResponseError, match=r'\{"data": \[...\]\}'):
        c.fetch_domains()


def test_response_body_is_bounded(api_server: ApiServer) -> None:
    """An answer larger than max_body is refused without reading it all."""
    api_server.domains = [
        {"domain_id": n, "hostname": f"h{n}.example", "port": 443} for n in range(2000)
    ]
    with client(api_server, max_body=4096) as c, pytest.raises(ResponseError, match="larger than"):
        c.fetch_domains()


def test_post_rejections_and_html_answers(api_server: ApiServer) -> None:
    """A 422 rejects that one result for good; a 200 HTML page is not an acceptance."""
    api_server.script("certificate", Reply.error(422), HTML_PAGE)
    with client(api_server) as c:
        with pytest.raises(RejectedError, match="domain_id 5 with HTTP 422"):
            c.post({"domain": {"domain_id": 5}})
        with pytest.raises(TransientError, match="HTML page"):
            c.post({"domain": {"domain_id": 5}})
    assert api_server.posted == []


def test_redirects_are_not_followed(api_server: ApiServer) -> None:
    """A redirect is reported (the token is never carried to another address)."""
    api_server.script("domains", Reply(302, b"", headers=(("Location", "https://elsewhere/"),)))
    with client(api_server) as c, pytest.raises(ApiError, match=r"redirected .*elsewhere"):
        c.fetch_domains()
    assert len(api_server.requests) == 1


def test_https_needs_the_ca_bundle(https_api_server: ApiServer, api_chain: Chain) -> None:
    """TLS is verified: a private CA fails with advice, and works via TRACKSSL_CA_BUNDLE."""
    with client(https_api_server) as c, pytest.raises(ApiError, match="TRACKSSL_CA_BUNDLE"):
        c.fetch_domains()
    assert https_api_server.requests == []
    with client(https_api_server, ca_bundle=api_chain.ca_file) as c:
        c.fetch_domains()
    assert https_api_server.requests[0].headers["Authorization"] == f"Bearer {AUTH_TOKEN}"


def test_https_hostname_is_checked(tmp_path: Path) -> None:
    """A certificate for another name is refused even with its CA in the bundle."""
    chain = make_chain(tmp_path, cn="other.example", sans=("other.example",), name="wrong")
    with (
        ApiServer(tls=chain) as server,
        client(server, ca_bundle=chain.ca_file) as c,
        pytest.raises(ApiError, match="TLS verification"),
    ):
        c.fetch_domains()


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that records the tunnels it opened."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.tunnels: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                return
            head += data
        method, target, _ = head.split(b"\r\n")[0].decode().split(" ")
        host, port = target.rsplit(":", 1)
        assert method == "CONNECT"
        assert host == "127.0.0.1"  # the tests only ever tunnel to loopback
        self.tunnels.append(target)
        upstream = socket.create_connection((host, int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    def close(self) -> None:
        """Stop accepting."""
        self.sock.close()


@pytest.fixture
def connect_proxy() -> Iterator[ConnectProxy]:
    """A CONNECT proxy on loopback."""
    proxy = ConnectProxy()
    yield proxy
    proxy.close()


def test_https_proxy_from_the_environment(
    https_api_server: ApiServer,
    api_chain: Chain,
    connect_proxy: ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY tunnels the verified API connection; NO_PROXY bypasses it."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{connect_proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    settings = ApiSettings(
        url=https_api_server.url,
        auth_token=Secret(AUTH_TOKEN),
        agent_token=AGENT_TOKEN,
        ca_bundle=api_chain.ca_file,
    )
    with ApiClient(settings) as c:
        c.fetch_domains()
    assert connect_proxy.tunnels == [f"127.0.0.1:{https_api_server.port}"]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with ApiClient(settings) as c:
        c.fetch_domains()
    assert len(connect_proxy.tunnels) == 1
    assert len(https_api_server.requests) == 2


def test_netrc_cannot_replace_the_token(
    api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc entry for the API host does not override the bearer header."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    with ApiClient(
        ApiSettings(url=api_server.url, auth_token=Secret(AUTH_TOKEN), agent_token=AGENT_TOKEN)
    ) as c:
        c.fetch_domains()
    assert api_server.requests[0].headers["Authorization"] == f"Bearer {AUTH_TOKEN}"


@pytest.fixture(scope="module")
def good_chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """A chain for a TLS target."""
    return make_chain(tmp_path_factory.mktemp("target"), name="target")


def test_payload_of_a_retrieved_chain(good_chain: Chain) -> None:
    """The post carries the leaf PEM, the chain, probed_at, tls_version, address, version."""
    with running(tls_server(server_context(good_chain))) as server:
        domain = schema.domain_from_entry(
            {"domain_id": 34027, "hostname": "127.0.0.1", "port": server.port}
        )
        result = probe(domain.target, ProbeSettings(timeout=5))
    body = schema.payload(domain, result)["domain"]
    assert body["domain_id"] == 34027
    assert body["hostname"] == "127.0.0.1"
    assert body["port"] == str(server.port)
    assert body["error"] == ""
    assert body["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert body["certificate"] == body["chain"][0]
    assert len(body["chain"]) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["probed_at"])
    assert body["tls_version"] == "TLSv1.3"
    assert body["address"] == "127.0.0.1"
    assert body["agent_version"] == __version__


def test_payload_of_a_failure() -> None:
    """A failed probe posts an empty certificate and ``KIND: message``."""
    domain = schema.domain_from_entry(
        {"domain_id": 1, "hostname": "127.0.0.1", "port": str(closed_port())}
    )
    result = probe(domain.target, ProbeSettings(timeout=2))
    body = schema.payload(domain, result)["domain"]
    assert body["certificate"] == ""
    assert body["chain"] == []
    assert body["error"].startswith("refused: ")


def test_settings_repr_hides_the_token() -> None:
    """ApiSettings never prints the token, even in a traceback's repr."""
    settings = ApiSettings(url="https://x", auth_token=Secret(AUTH_TOKEN), agent_token=AGENT_TOKEN)
    assert AUTH_TOKEN not in repr(settings)


def test_payload_body_is_the_payload_as_json(good_chain: Chain) -> None:
    """The bytes posted and stored are exactly ``payload`` as JSON, ASCII and on one line."""
    with running(tls_server(server_context(good_chain))) as server:
        domain = schema.domain_from_entry(
            {"domain_id": 7, "hostname": "127.0.0.1", "port": server.port}
        )
        ok = probe(domain.target, ProbeSettings(timeout=5))
    odd = schema.Domain(8, 'h\u00e9\u2028"x', "443", domain.target)
    failed = ProbeResult(
        target=domain.target, servername=None, address=None, probed_at=datetime.now(UTC),
        elapsed_ms=1.0, error=ProbeError(ErrorKind.TIMEOUT, 'no "answer"\n\u00e9'),
    )  # fmt: skip
    for entry, result in ((domain, ok), (odd, failed)):
        body = schema.payload_body(entry, result)
        assert b"\n" not in body
        assert body.isascii()
        assert json.loads(body) == schema.payload(entry, result)


def test_post_answer_trickled_past_the_deadline_is_cut(api_server: ApiServer) -> None:
    """A post whose answer trickles (each byte inside the read timeout) ends at its deadline."""
    api_server.fail("certificate", Reply.trickled(b"{}" + b" " * 200, 0.2, headers_too=True))
    with (
        client(api_server, request_deadline=1.0, retries=1) as c,
        pytest.raises(TransientError, match="no complete answer within 1 s"),
    ):
        c.post(b'{"domain":{"domain_id":3}}', domain_id=3)
    assert len(api_server.requests) == 2


def test_429_and_503_tell_the_poster_to_back_off(api_server: ApiServer) -> None:
    """Each 429/503 is reported with the delay Retry-After asked for, then retried."""
    api_server.script("certificate", Reply.error(429, **{"Retry-After": "3"}), Reply.error(503), OK)
    told: list[float] = []
    with client(api_server) as c:
        c.post(b'{"domain":{"domain_id":4}}', domain_id=4, overloaded=told.append)
    assert told == [3.0, 1.5]  # Retry-After, then the second backoff step (jitter 0.5)
    assert api_server.posted_ids() == [4]
