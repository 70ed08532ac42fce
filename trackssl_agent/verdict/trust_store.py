"""The trust anchors targets are judged against (SPEC section 4a): the operating system's store
plus ``--ca-file``, read from disk (or the OS) only, never fetched.

Where the store lives: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when the user sets them (on every
platform, as OpenSSL reads them); else on Linux and the BSDs the system bundle (the OpenSSL
default paths, then the well-known files of each distribution, then the hashed folders); on
Windows the ROOT store of the local machine and user; on macOS the system roots and the
System keychain read through ``security``. A frozen build carries its own OpenSSL, whose default
paths point into the build machine's layout or the bundle: those are skipped, so the host's
store is read, never a bundled copy (certifi travels with requests).

Nothing here raises on what a store holds: a file that cannot be read or a certificate that
does not parse is skipped; a store that gives nothing becomes one ``note``.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trackssl_agent.errors import UsageError

if TYPE_CHECKING:
    from cryptography import x509

LINUX_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Gentoo, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL 6
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL 7 and later, Amazon Linux
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # Alpine, the BSDs, macOS's OpenSSL
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/usr/local/etc/ssl/cert.pem",  # FreeBSD ports
)
"""System bundles, as Go's crypto/x509 looks for them: the first that gives certificates wins."""
LINUX_DIRS = ("/etc/ssl/certs", "/etc/pki/tls/certs", "/system/etc/security/cacerts")
"""Hashed folders, read only when no bundle file gave anything."""
MACOS_KEYCHAINS = (
    "/System/Library/Keychains/SystemRootCertificates.keychain",
    "/Library/Keychains/System.keychain",  # roots an administrator added
)
SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
"""The purpose a Windows ROOT entry must allow (or allow all) to be a TLS server anchor."""
MAX_FILE = 16 * 1024 * 1024
"""A bundle larger than this is not a CA bundle; reading it whole would only cost memory."""
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class Anchors:
    """The certificates judging trusts, and where they came from."""

    certs: tuple[x509.Certificate, ...]
    sources: tuple[str, ...]
    """Files, folders or OS stores read, for messages and ``doctor``."""
    note: str | None = None
    """Set when no OS store could be read: said once, as a note."""


def parse_pem(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle that parses; the others are skipped."""
    from cryptography import x509  # noqa: PLC0415 - judging only: run never loads it

    found = []
    for block in _PEM.findall(data):
        try:
            found.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return found


def _parse_der(data: bytes) -> x509.Certificate | None:
    from cryptography import x509  # noqa: PLC0415 - see parse_pem

    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        return None


def _read(path: Path) -> bytes | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_FILE:
            return None
        return path.read_bytes()
    except OSError:
        return None


def read_file(path: Path) -> list[x509.Certificate]:
    """The certificates of one PEM file; none when it cannot be read."""
    data = _read(path)
    return parse_pem(data) if data else []


def read_dir(path: Path) -> list[x509.Certificate]:
    """The certificates of every PEM file in a folder (OpenSSL's hashed layout included)."""
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return []
    return [cert for entry in entries for cert in read_file(entry)]


def _bundled(path: str, bundle: str | None) -> bool:
    """Whether ``path`` lies inside a frozen build's own folder (never the host's store)."""
    if not bundle:
        return False
    try:
        return Path(path).resolve().is_relative_to(Path(bundle).resolve())
    except (OSError, ValueError):
        return False


def _posix_store(
    environ: Mapping[str, str], bundle: str | None
) -> tuple[list[x509.Certificate], list[str]]:
    """The user's SSL_CERT_FILE / SSL_CERT_DIR, else the system bundle or hashed folder."""
    chosen = [
        (kind, environ[name])
        for kind, name in (("file", "SSL_CERT_FILE"), ("dir", "SSL_CERT_DIR"))
        if environ.get(name) and not _bundled(environ[name], bundle)
    ]
    if chosen:
        certs: list[x509.Certificate] = []
        for kind, where in chosen:
            certs += read_file(Path(where)) if kind == "file" else read_dir(Path(where))
        return certs, [where for _kind, where in chosen]
    defaults = ssl.get_default_verify_paths()
    files = [defaults.cafile, defaults.openssl_cafile, *LINUX_FILES]
    for where in dict.fromkeys(f for f in files if f and not _bundled(f, bundle)):
        found = read_file(Path(where))
        if found:
            return found, [where]
    dirs = [defaults.capath, defaults.openssl_capath, *LINUX_DIRS]
    for where in dict.fromkeys(d for d in dirs if d and not _bundled(d, bundle)):
        found = read_dir(Path(where))
        if found:
            return found, [where]
    return [], []


def windows_entries(entries: Iterable[tuple[bytes, str, set[str] | bool]]) -> list[bytes]:
    """The DER of the ``ssl.enum_certificates`` entries that anchor TLS servers: X.509 ones
    trusted for every purpose or for server authentication."""
    return [
        data
        for data, encoding, trust in entries
        if encoding == "x509_asn"
        and (trust is True or (isinstance(trust, set) and SERVER_AUTH in trust))
    ]


def _windows_store() -> tuple[list[x509.Certificate], list[str]]:
    """The ROOT store (local machine and current user, as CryptoAPI merges them).

    Windows fetches some roots from Windows Update only when a verification first needs
    them; those are not in the store until then, and offline judging cannot ask for them.
    """
    enum = getattr(ssl, "enum_certificates", None)
    if enum is None:
        return [], []
    try:
        entries = enum("ROOT")
    except OSError:
        return [], []
    certs = [c for c in (_parse_der(der) for der in windows_entries(entries)) if c is not None]
    return certs, ["Windows ROOT store"] if certs else []


def _macos_store(
    run: Callable[[list[str]], bytes | None],
) -> tuple[list[x509.Certificate], list[str]]:
    """The system roots and the System keychain, as PEM from ``security find-certificate``.

    Trust settings (a root an administrator distrusted) are not read: offline, the agent
    treats every certificate of those keychains as an anchor.
    """
    certs: list[x509.Certificate] = []
    sources: list[str] = []
    for keychain in MACOS_KEYCHAINS:
        data = run(["/usr/bin/security", "find-certificate", "-a", "-p", keychain])
        found = parse_pem(data) if data else []
        if found:
            certs += found
            sources.append(keychain)
    return certs, sources


def _run_security(command: list[str]) -> bytes | None:
    try:
        # A fixed argument list naming a system tool by its full path; no shell.
        done = subprocess.run(command, capture_output=True, timeout=30, check=False)  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def os_store(
    *,
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
    bundle: str | None = None,
    run: Callable[[list[str]], bytes | None] = _run_security,
) -> tuple[list[x509.Certificate], list[str]]:
    """The OS store's certificates and where they were read; both empty when none could be.

    ``bundle`` is a frozen build's own folder (``sys._MEIPASS``): nothing inside it counts.
    """
    env = os.environ if environ is None else environ
    if env.get("SSL_CERT_FILE") or env.get("SSL_CERT_DIR") or platform not in {"win32", "darwin"}:
        certs, sources = _posix_store(env, bundle)
        if certs or platform not in {"win32", "darwin"}:
            return certs, sources
    if platform == "win32":
        return _windows_store()
    return _macos_store(run)


def load_ca_file(path: Path) -> list[x509.Certificate]:
    """``--ca-file``'s certificates; UsageError (exit 3, before anything is probed) when the
    file cannot be read or holds none."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--ca-file {path}: cannot read it: {exc.strerror or exc}") from None
    certs = parse_pem(data)
    if not certs:
        raise UsageError(
            f"--ca-file {path}: no PEM certificate in it; give the CA certificates as PEM"
        )
    return certs


def _dedupe(certs: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    seen: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        seen.setdefault(_der(cert), cert)
    return tuple(seen.values())


def _der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    return cert.public_bytes(Encoding.DER)


class LazyAnchors:
    """The anchors, read on first use and then kept: once per command, and not at all when
    no target presented anything to judge."""

    def __init__(
        self,
        extra: Iterable[x509.Certificate] = (),
        *,
        extra_source: str | None = None,
        read_os_store: Callable[[], tuple[list[x509.Certificate], list[str]]] | None = None,
    ) -> None:
        self._extra = list(extra)
        self._extra_source = extra_source
        self._read = read_os_store or (lambda: os_store(bundle=getattr(sys, "_MEIPASS", None)))
        self._lock = threading.Lock()
        self._anchors: Anchors | None = None

    def __call__(self) -> Anchors:
        """The anchors, reading the OS store the first time."""
        with self._lock:
            if self._anchors is None:
                self._anchors = self._load()
            return self._anchors

    def _load(self) -> Anchors:
        certs, sources = self._read()
        note = None
        if not certs:
            note = "no OS trust store could be read (set SSL_CERT_FILE to a PEM bundle); " + (
                "trust is judged against --ca-file only"
                if self._extra
                else "no target can be trusted"
            )
        if self._extra_source:
            sources = [*sources, self._extra_source]
        return Anchors(_dedupe([*certs, *self._extra]), tuple(sources), note)
