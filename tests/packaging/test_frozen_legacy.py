"""The legacy and hostile servers of test_probe.py, probed by a frozen executable: what the
OpenSSL inside a release binary accepts, not only what the test interpreter's does.

The executables come from ``TRACKSSL_AGENT_BINARY`` (one path, or several joined by the
path separator: the release workflow points it at the build it is about to publish), else
from ``dist/`` (both builds), built first when missing or stale, as test_frozen.py does.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import tls_servers
from tests.certs import Chain, make_chain, self_signed
from tests.cli_helpers import agent_environ
from tests.frozen_builds import FOLDER, ONEFILE, ensure_built
from trackssl_agent.engine.certificates import to_pem

pytestmark = pytest.mark.frozen


def binaries() -> list[Path]:
    """The executables under test: $TRACKSSL_AGENT_BINARY, else both builds in dist/."""
    named = os.environ.get("TRACKSSL_AGENT_BINARY")
    if named:
        paths = [Path(part) for part in named.split(os.pathsep) if part]
        missing = [str(path) for path in paths if not path.is_file()]
        assert not missing, f"TRACKSSL_AGENT_BINARY names missing files: {missing}"
        return paths
    return [ONEFILE, FOLDER]


@pytest.fixture(params=binaries(), ids=lambda p: p.parent.name)
def agent(request: pytest.FixtureRequest) -> Path:
    """One frozen executable; the builds in dist/ are made first when missing or stale."""
    path: Path = request.param
    if not os.environ.get("TRACKSSL_AGENT_BINARY"):
        ensure_built()
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for this module's certificates."""
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def rsa_chain(certs: Path) -> Chain:
    """An RSA leaf signed by an intermediate."""
    return make_chain(certs, kind="rsa", name="rsa")


def probe_json(agent: Path, endpoint: str, tmp_path: Path) -> dict[str, Any]:
    """``probe ENDPOINT --json`` of the frozen agent: the one result object."""
    env = agent_environ(TMPDIR=str(tmp_path), TMP=str(tmp_path), TEMP=str(tmp_path))
    result = subprocess.run(
        [str(agent), "probe", endpoint, "--json", "--timeout", "10"],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    [probed] = json.loads(result.stdout)
    assert isinstance(probed, dict)
    return probed


@pytest.mark.parametrize(("flag", "version"), [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")])
def test_frozen_reads_tls10_tls11_sha1_rsa1024(
    agent: Path, certs: Path, tmp_path: Path, flag: str, version: str
) -> None:
    """The frozen agent reads TLS 1.0/1.1-only servers with RSA-1024/SHA-1 certificates."""
    chain = self_signed(certs, name=f"legacy{flag}", bits=1024, hash_name="sha1")
    server = tls_servers.OpensslServer(chain, flag, "-cipher", "ALL:@SECLEVEL=0")
    try:
        probed = probe_json(agent, f"127.0.0.1:{server.port}", tmp_path)
    finally:
        server.close()
    assert probed["ok"] is True, probed["error"]
    assert probed["tls_version"] == version
    assert probed["chain"] == [to_pem(der) for der in chain.ders]
    assert probed["certificate"]["key"] == "RSA 1024"
    assert probed["certificate"]["signature_algorithm"] == "sha1WithRSAEncryption"


def test_frozen_reads_a_server_without_secure_renegotiation(
    agent: Path, rsa_chain: Chain, tmp_path: Path
) -> None:
    """The frozen agent reads a TLS 1.2 server that omits RFC 5746 (gnutls-serv)."""
    priority = "NORMAL:-VERS-TLS1.3:%DISABLE_SAFE_RENEGOTIATION"
    server = tls_servers.GnutlsServer(rsa_chain, priority)
    try:
        probed = probe_json(agent, f"127.0.0.1:{server.port}", tmp_path)
    finally:
        server.close()
    assert probed["ok"] is True, probed["error"]
    assert probed["tls_version"] == "TLSv1.2"
    assert probed["chain"] == [to_pem(der) for der in rsa_chain.ders]


def test_frozen_keeps_the_chain_when_a_client_certificate_is_demanded(
    agent: Path, rsa_chain: Chain, tmp_path: Path
) -> None:
    """A TLS 1.2 server demanding a client certificate still yields its chain and a warning."""
    context = tls_servers.server_context(
        rsa_chain, max_version=ssl.TLSVersion.TLSv1_2, client_ca=rsa_chain.ca_file
    )
    with tls_servers.running(tls_servers.tls_server(context)) as server:
        probed = probe_json(agent, server.endpoint, tmp_path)
    assert probed["ok"] is True, probed["error"]
    assert probed["chain"] == [to_pem(der) for der in rsa_chain.ders]
    assert "broke off" in (probed["warning"] or "")
