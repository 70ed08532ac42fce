"""The doctor's probe-side checks: what this build's TLS engine can still reach (the
line a support request quotes), and a sample of the domain list: DNS and TRACKSSL_ALLOW
only, or a real probe with ``--probe``.

The legacy test is a handshake between two in-memory TLS endpoints of this very build,
so it contacts nothing and answers for the OpenSSL actually linked, not its version text.
"""

from __future__ import annotations

import socket
import ssl
import sys
import tempfile
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from trackssl_agent import __version__
from trackssl_agent.cloud.schema import Domain
from trackssl_agent.config.config import Config
from trackssl_agent.doctor.values import Check, Status
from trackssl_agent.engine import certificates, probe, probe_pool
from trackssl_agent.engine.results import ProbeError, ProbeResult
from trackssl_agent.engine.transport import Deadline

DNS_SECONDS = 5.0
"""The sample's lookups share one deadline this long."""


def build_form() -> str:
    """How this copy was installed: a Python package, or a PyInstaller single file or folder
    (told apart as ``build/hooks/rthook_preload.py`` does)."""
    if not getattr(sys, "frozen", False):
        return f"Python package (pip) in {sys.prefix}"
    meipass = getattr(sys, "_MEIPASS", None)
    exe_dir = Path(sys.executable).resolve().parent
    if meipass is None or Path(meipass).resolve() in (exe_dir, exe_dir / "_internal"):
        return f"folder build at {exe_dir}"
    return f"single-file build {Path(sys.executable).name}"


def _legacy_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway RSA-1024 certificate and key for the in-memory legacy server."""
    from cryptography import x509  # noqa: PLC0415 - only the doctor needs these
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the legacy server under test
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy.invalid")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = directory / "legacy.crt", directory / "legacy.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _legacy_handshake() -> str | None:
    """None when the probe's client context completes a TLS 1.0 handshake (MD5/SHA-1
    signatures) with an RSA-1024 server; else why not."""
    with tempfile.TemporaryDirectory(prefix="trackssl-doctor-") as folder:
        cert_file, key_file = _legacy_certificate(Path(folder))
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():  # naming TLSv1 warns; this test is about it
            warnings.simplefilter("ignore", DeprecationWarning)
            server_context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            server_context.maximum_version = ssl.TLSVersion.TLSv1
        try:
            server_context.set_ciphers("ALL:@SECLEVEL=0")
            server_context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            return f"this OpenSSL refuses a legacy server setup ({exc.reason or exc})"
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    client = probe.client_context().wrap_bio(*pipes[0], server_hostname=None)
    server = server_context.wrap_bio(*pipes[1], server_side=True)
    for _ in range(20):  # a TLS 1.0 handshake takes 2 round trips
        done = 0
        for side, (_incoming, outgoing), (peer_in, _peer_out) in (
            (client, pipes[0], pipes[1]),
            (server, pipes[1], pipes[0]),
        ):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return f"the handshake failed: {exc.reason or exc}"
            peer_in.write(outgoing.read())
        if done == 2:
            return None if client.version() == "TLSv1" else f"it ended as {client.version()}"
    return "the handshake did not complete"


def engine() -> Check:
    """Python, OpenSSL, whether legacy handshakes are possible, and the build form."""
    legacy = _legacy_handshake()
    base = (
        f"trackssl-agent {__version__}, Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, "
        f"{build_form()}"
    )
    if legacy is None:
        return Check("engine", Status.OK, f"{base}; legacy TLS 1.0, SHA-1, RSA-1024: possible")
    return Check(
        "engine", Status.WARN, f"{base}; legacy TLS 1.0, SHA-1, RSA-1024: not possible ({legacy})",
        "servers that speak only TLS 1.0 will fail the handshake; use the agent's own builds",
    )  # fmt: skip


def targets(
    cfg: Config, domains: Sequence[Domain] | None, *, sample: int, send_probe: bool,
    deadline: Deadline,
) -> list[Check]:  # fmt: skip
    """The first ``sample`` domains: DNS and TRACKSSL_ALLOW, and a probe if asked."""
    if sample <= 0:
        return []
    if domains is None:
        return [Check("targets", Status.WARN, "not checked: no domain list", "see auth")]
    if not domains:
        return [Check("targets", Status.OK, "the domain list is empty: nothing to check yet")]
    chosen = list(domains[:sample])
    checks: list[Check] = []
    try:
        shared = Deadline(min(DNS_SECONDS, deadline.remaining()))
    except TimeoutError:
        return [Check("targets", Status.WARN, "not checked: the doctor's time ran out", "")]
    for domain in chosen:
        checks.append(_dns(cfg, domain, shared))
    if send_probe:
        checks += _probe(cfg, chosen, deadline)
    return checks


def _dns(cfg: Config, domain: Domain, deadline: Deadline) -> Check:
    target = domain.target
    name = f"target {target.endpoint}"
    found = probe.resolve(target, socket.AF_UNSPEC, deadline)
    if isinstance(found, ProbeError):
        return Check(
            name, Status.WARN, found.message, "fix the name in TrackSSL or this host's DNS"
        )
    addresses = sorted({str(info[4][0]) for info in found})
    shown = ", ".join(addresses[:4]) + (", ..." if len(addresses) > 4 else "")
    if cfg.allow is None:
        return Check(name, Status.OK, f"is {shown}; TRACKSSL_ALLOW not set, so it may be probed")
    if not any(cfg.allow(target, address) for address in addresses):
        return Check(
            name, Status.WARN, f"is {shown}: outside TRACKSSL_ALLOW, so it is never contacted",
            "add its network or host name to TRACKSSL_ALLOW if it should be checked",
        )  # fmt: skip
    return Check(name, Status.OK, f"is {shown}; TRACKSSL_ALLOW admits it")


def _probe(cfg: Config, chosen: list[Domain], deadline: Deadline) -> list[Check]:
    """One probe per sampled target, all at once, within the time left."""
    try:
        timeout = min(cfg.timeout, deadline.remaining())
    except TimeoutError:
        return [Check("probe", Status.WARN, "not sent: the doctor's time ran out", "")]
    settings = probe.ProbeSettings(timeout=timeout, allow=cfg.allow)
    results: dict[int, ProbeResult] = {}
    # Consumed to its end: every probe ends by its deadline, within the time left.
    for index, result in probe_pool.probe_many(
        [d.target for d in chosen], settings, concurrency=len(chosen)
    ):
        results[index] = result
    return [_probe_line(results[index]) for index in sorted(results)]


def _probe_line(result: ProbeResult) -> Check:
    name = f"probe {result.target.endpoint}"
    if result.error is not None or not result.chain:
        why = result.error.message if result.error else "no certificate was presented"
        return Check(name, Status.WARN, why, "run `trackssl-agent probe` on it for details")
    expires = certificates.expiry(result.chain[0])
    # The verdict's words (SPEC 4a): a date before the probe is "expired", never "expires".
    verb = "expired" if expires is not None and expires < result.probed_at else "expires"
    until = f"leaf {verb} {expires:%Y-%m-%d}" if expires else "leaf expiry unreadable"
    return Check(
        name, Status.OK, f"{result.tls_version}, {len(result.chain)} certificates, {until}"
    )
