"""Shared pytest fixtures: the fake TrackSSL API (``tests/api_server.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_server import ApiServer
from tests.certs import Chain, make_chain


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
