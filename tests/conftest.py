"""Shared pytest fixtures: the fake TrackSSL API (``tests/api_server.py``) and loopback targets."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_server import ApiServer
from tests.certs import Chain, make_chain
from tests.cli_helpers import foreign, steers_connections
from tests.shared_dirs import remove_session_dir
from tests.tls_servers import TcpServer, server_context, silent_server, tls_server
from tests.verdict_servers import World, running_world
from trackssl_agent.log import LOGGER_NAME


@pytest.fixture(scope="session", autouse=True)
def _shared_dirs() -> Iterator[None]:
    """The session's folder for other users (``tests.shared_dirs``) goes with the session."""
    yield
    remove_session_dir()


@pytest.fixture(autouse=True)
def _no_runner_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test, nor any process it starts, sees the runner's proxy or CA bundle variables
    (``steers_connections``); a test that wants a proxy sets its own."""
    for name in list(os.environ):
        if steers_connections(name):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _agent_logging_reset() -> Iterator[None]:
    """Each test starts and ends without the agent's log handlers: a handler bound to a
    stream pytest captured for one test (and closed) must not reach the next."""
    yield
    agent = logging.getLogger(LOGGER_NAME)
    for handler in list(agent.handlers):
        agent.removeHandler(handler)
        handler.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TRACKSSL_, CA bundle or proxy variable from outside (``foreign``), in this process
    and the agents it starts; a fresh working dir and state dir."""
    for name in list(os.environ):
        if foreign(name):
            monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TRACKSSL_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    """A started plain-http fake TrackSSL API on 127.0.0.1 (loopback http is allowed)."""
    with ApiServer() as server:
        yield server


@pytest.fixture(scope="session")
def api_chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """A private CA chain for the https API (its root is ``ca_file``)."""
    return make_chain(tmp_path_factory.mktemp("api-ca"), cn="localhost", name="api")


@pytest.fixture
def https_api_server(api_chain: Chain) -> Iterator[ApiServer]:
    """A started https fake TrackSSL API whose CA is ``api_chain.ca_file``."""
    with ApiServer(tls=api_chain) as server:
        yield server


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty state dir for the outbox and the lock."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """The 90-day chain the good targets present."""
    return make_chain(tmp_path_factory.mktemp("targets"), name="targets")


@pytest.fixture(scope="module")
def good(chain: Chain) -> Iterator[list[TcpServer]]:
    """Ten TLS servers on loopback presenting ``chain``."""
    context = server_context(chain)
    servers = [tls_server(context) for _ in range(10)]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def silent() -> Iterator[list[TcpServer]]:
    """Forty listeners that accept and never answer."""
    servers = [silent_server() for _ in range(40)]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Loopback TLS servers presenting one kind of certificate each, for judging."""
    with running_world(tmp_path_factory.mktemp("verdict")) as servers:
        yield servers


@pytest.fixture
def store(env: Path, world: World, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The OS trust store is the bundle of ``world``'s trusted roots (SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(world.bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return world.bundle
