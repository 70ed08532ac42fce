"""The loopback TLS servers the verdict tests judge: one per kind of certificate, and the
bundle of the roots the tests' OS store trusts (``SSL_CERT_FILE``)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests import tls_servers
from tests.certs import Chain, make_chain, openssl_chain, self_signed

NOW = datetime.now(UTC)
TRUSTED = ("good", "expired", "warn", "crit", "future", "nointer", "named", "wild", "weak", "v1")
"""The chains whose root is in the test's OS store; ``private`` and ``selfsigned`` are not."""


@dataclass(frozen=True)
class World:
    """The servers by chain name, and the store bundle."""

    ports: dict[str, int]
    chains: dict[str, Chain]
    bundle: Path


def _legacy_context(chain: Chain) -> ssl.SSLContext:
    """A server context that may present an RSA-1024/SHA-1 certificate (OpenSSL's security
    level 0; the default refuses to load it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(chain.cert_file, chain.key_file)
    return context


@contextmanager
def running_world(base: Path) -> Iterator[World]:
    """One loopback TLS server per kind of certificate, certificates under ``base``."""
    chains = {
        "good": make_chain(base, name="good"),
        "expired": make_chain(
            base,
            name="expired",
            not_before=NOW - timedelta(days=60),
            not_after=NOW - timedelta(days=4, hours=2),
        ),
        "warn": make_chain(base, name="warn", days=10.5),
        "crit": make_chain(base, name="crit", days=3.5),
        "future": make_chain(
            base,
            name="future",
            not_before=NOW + timedelta(days=2),
            not_after=NOW + timedelta(days=90),
        ),
        "selfsigned": self_signed(base, name="selfsigned", cn="localhost"),
        "private": make_chain(base, name="private"),
        "nointer": make_chain(base, name="nointer", send_intermediate=False),
        "named": make_chain(base, name="named", sans=("localhost",)),
        "wild": make_chain(base, name="wild", cn="x.a.test", sans=("*.a.test",)),
        "weak": openssl_chain(base, name="weak", leaf_bits=1024, leaf_hash="sha1"),
        "v1": openssl_chain(base, name="v1", v1_intermediate=True),
    }
    bundle = base / "os-store.pem"
    bundle.write_bytes(b"".join(chains[name].ca_file.read_bytes() for name in TRUSTED))
    servers = {
        name: tls_servers.tls_server(
            _legacy_context(chain) if name == "weak" else tls_servers.server_context(chain)
        )
        for name, chain in chains.items()
    }
    try:
        yield World({name: s.port for name, s in servers.items()}, chains, bundle)
    finally:
        for server in servers.values():
            server.close()
