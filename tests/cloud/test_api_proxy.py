"""The API and proxies, with the real processes: a plain-http API on a loopback host is never
reached through a proxy, whatever HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY say (the
proxy would get the token in clear and fetch "localhost" on its own host); an https API
still goes through the proxy's CONNECT tunnel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api_server import AUTH_TOKEN, ApiServer, domain_entries
from tests.certs import Chain
from tests.cli_helpers import agent_environ, steers_connections
from tests.proxy_server import RecordingProxy
from tests.tls_servers import TcpServer
from trackssl_agent.cloud import api

ROOT = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "trackssl_agent"]
PASSWORD = "loopback-proxy-pass-1"  # noqa: S105 - a test-only proxy password


def proxied_env(server: ApiServer, proxy: RecordingProxy, state: Path, url: str) -> dict[str, str]:
    """The agent's environment: ``url`` for the API and every proxy variable at ``proxy``
    (NO_PROXY naming another host), as a host with a corporate proxy has."""
    env = agent_environ()
    via = proxy.url("agent", PASSWORD)
    env.update(
        server.env(), TRACKSSL_URL=url, TRACKSSL_STATE_DIR=str(state), PYTHONPATH=str(ROOT),
        HTTP_PROXY=via, http_proxy=via, HTTPS_PROXY=via, ALL_PROXY=via,
        NO_PROXY="intranet.example", no_proxy="intranet.example",
    )  # fmt: skip
    return env


def assert_direct(server: ApiServer, proxy: RecordingProxy, output: str) -> None:
    """The API got the token directly; the proxy got nothing at all."""
    assert any(r.headers.get("Authorization") == f"Bearer {AUTH_TOKEN}" for r in server.requests)
    assert proxy.received == b"", proxy.request_lines
    assert AUTH_TOKEN not in output
    assert PASSWORD not in output


def _run_proxied(
    args: list[str], api_server: ApiServer, url: str, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], RecordingProxy]:
    """The agent run to its end with ``args``, TRACKSSL_URL ``url`` and every proxy variable
    pointing at a recording proxy; its outcome, and the proxy (closed) with what it got."""
    with RecordingProxy() as proxy:
        done = subprocess.run(
            [*AGENT, *args], env=proxied_env(api_server, proxy, tmp_path / "state", url),
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    return done, proxy


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_check_once_never_sends_loopback_http_through_a_proxy(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path, host: str
) -> None:
    """check-once with TRACKSSL_URL=http://<loopback>:PORT and every proxy variable set:
    the domain list and the post go straight to the API, the proxy receives no byte."""
    api_server.domains = domain_entries({1: good[0].port})
    url = f"http://{host}:{api_server.port}"
    done, proxy = _run_proxied(["check-once", "--log-level", "debug"], api_server, url, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert api_server.posted_ids() == [1]
    assert_direct(api_server, proxy, output)


def test_run_never_sends_loopback_http_through_a_proxy(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path
) -> None:
    """run (its cycle child included) with every proxy variable set: the post reaches the
    API directly, the proxy receives no byte."""
    api_server.domains = domain_entries({1: good[0].port})
    stderr = tmp_path / "run.stderr"
    with RecordingProxy() as proxy, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*AGENT, "run", "--log-level", "debug"],
            env=proxied_env(api_server, proxy, tmp_path / "state", api_server.url),
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            delivered = api_server.wait_for(lambda: api_server.posted_ids() == [1], timeout=30)
            time.sleep(0.5)  # anything sent to the proxy meanwhile would be recorded
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    output = stderr.read_text(errors="replace")
    assert delivered, output
    assert code == 0, output
    assert_direct(api_server, proxy, output)


def test_doctor_reaches_a_loopback_http_api_directly(api_server: ApiServer, tmp_path: Path) -> None:
    """doctor with every proxy variable set and a loopback http URL: its connection steps
    and the auth step go direct, the proxy line says why, no tunnel is claimed."""
    api_server.domains = domain_entries({1: 1})
    url = f"http://localhost:{api_server.port}"
    done, proxy = _run_proxied(["doctor", "--targets-sample", "0"], api_server, url, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "opened a tunnel" not in output
    proxy_line = next(row for row in output.splitlines() if " api proxy " in f" {row} ")
    assert proxy_line.startswith("ok") and "never goes through a proxy" in proxy_line, output
    assert "1 domains" in output
    assert [r.endpoint for r in api_server.requests] == ["other", "domains"]
    assert_direct(api_server, proxy, output)
    assert "Authorization" not in api_server.requests[0].headers  # the step without tokens


def test_https_still_goes_through_the_connect_tunnel(
    https_api_server: ApiServer, api_chain: Chain, tmp_path: Path
) -> None:
    """An https API with the same variables: reached only through CONNECT (the token
    inside TLS), never as a plain request to the proxy."""
    with RecordingProxy() as proxy:
        env = proxied_env(https_api_server, proxy, tmp_path / "state", https_api_server.url)
        env["TRACKSSL_CA_BUNDLE"] = str(api_chain.ca_file)
        done = subprocess.run(
            [*AGENT, "check-once"], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.rsplit(" ", 1)[0] for line in proxy.request_lines] == [
        f"CONNECT 127.0.0.1:{https_api_server.port}"
    ]
    assert AUTH_TOKEN.encode() not in proxy.received
    assert https_api_server.requests


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://127.9.8.7", "http://[::1]:80", "HTTP://LOCALHOST/"]
)
def test_no_proxy_applies_to_plain_http(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """environ_proxies gives no proxy for any loopback http URL, whatever the variables
    say (an https URL with the same variables gets one)."""
    for name in [name for name in os.environ if steers_connections(name)]:
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:3128")
    assert api.environ_proxies(url) == {}
    assert api.environ_proxies("https://127.0.0.1:8443")
