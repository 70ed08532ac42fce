"""Certificate factory for tests: CA -> intermediate -> leaf chains written as PEM files."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: str = "rsa", bits: int = 2048) -> PrivateKey:
    """A fresh RSA (``bits``) or ECDSA P-256 key."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    *,
    cn: str,
    key: PrivateKey,
    issuer_cn: str | None = None,
    issuer_key: PrivateKey | None = None,
    ca: bool = False,
    sans: tuple[str, ...] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    days: float = 90,
    serial: int | None = None,
    permitted: tuple[str, ...] = (),
) -> x509.Certificate:
    """One certificate; self-signed unless an issuer name and key are given. ``permitted``:
    DNS name constraints (a CA's permitted subtrees)."""
    now = datetime.now(UTC)
    start = not_before or now - timedelta(days=1)
    end = not_after or now + timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn or cn))
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        names: list[x509.GeneralName] = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if permitted:
        subtrees: list[x509.GeneralName] = [x509.DNSName(name) for name in permitted]
        builder = builder.add_extension(x509.NameConstraints(subtrees, None), critical=True)
    algorithm = hashes.SHA256()
    return builder.sign(issuer_key or key, algorithm)


def der(cert: x509.Certificate) -> bytes:
    """DER bytes of ``cert``."""
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    """PEM bytes of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key``."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Chain:
    """A server's files: ``cert_file`` holds leaf then intermediates; ``ders`` what it presents."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    ders: tuple[bytes, ...]
    leaf: x509.Certificate


def make_chain(
    directory: Path,
    *,
    cn: str = "localhost",
    kind: str = "rsa",
    days: float = 90,
    intermediate: bool = True,
    sans: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    name: str = "server",
    not_after: datetime | None = None,
    not_before: datetime | None = None,
    send_intermediate: bool = True,
) -> Chain:
    """Write a root CA, an optional intermediate and a leaf for ``cn`` under ``directory``;
    ``send_intermediate=False`` leaves the intermediate out of what the server presents."""
    directory.mkdir(parents=True, exist_ok=True)
    # The CAs are older than the leaf, as real ones are (a leaf valid from long ago needs them).
    ca_start = None
    if not_before is not None:
        ca_start = min(datetime.now(UTC), not_before) - timedelta(days=1)
    root_key = new_key(kind)
    root = make_cert(
        cn=f"{name} Test Root CA", key=root_key, ca=True, days=3650, not_before=ca_start
    )
    issuer, issuer_key = root, root_key
    presented: list[x509.Certificate] = []
    if intermediate:
        inter_key = new_key(kind)
        inter = make_cert(
            cn=f"{name} Test Issuing CA",
            key=inter_key,
            issuer_cn=f"{name} Test Root CA",
            issuer_key=root_key,
            ca=True,
            days=1825,
            not_before=ca_start,
        )
        issuer, issuer_key = inter, inter_key
    leaf_key = new_key(kind)
    leaf = make_cert(
        cn=cn,
        key=leaf_key,
        issuer_cn=issuer.subject.rfc4514_string()[3:],
        issuer_key=issuer_key,
        sans=sans,
        days=days,
        not_after=not_after,
        not_before=not_before,
    )
    presented.append(leaf)
    if intermediate and send_intermediate:
        presented.append(issuer)
    cert_file = directory / f"{name}.crt"
    key_file = directory / f"{name}.key"
    ca_file = directory / f"{name}-ca.crt"
    cert_file.write_bytes(b"".join(pem(c) for c in presented))
    key_file.write_bytes(key_pem(leaf_key))
    key_file.chmod(0o600)
    ca_file.write_bytes(pem(root))
    return Chain(cert_file, key_file, ca_file, tuple(der(c) for c in presented), leaf)


def self_signed(
    directory: Path,
    *,
    cn: str = "localhost",
    name: str = "selfsigned",
    bits: int = 2048,
    hash_name: str = "sha256",
    days: float = 90,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    serial: int | None = None,
) -> Chain:
    """A self-signed leaf (no intermediate): legacy RSA-1024/SHA-1, expired, odd serials..."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    if hash_name == "sha1":
        return _openssl_sha1(cert_file, key_file, cn=cn, bits=bits, days=days)
    key = new_key("rsa", bits)
    cert = make_cert(
        cn=cn, key=key, sans=(cn,), days=days,
        not_before=not_before, not_after=not_after, serial=serial,
    )  # fmt: skip
    cert_file.write_bytes(pem(cert))
    key_file.write_bytes(key_pem(key))
    key_file.chmod(0o600)
    return Chain(cert_file, key_file, cert_file, (der(cert),), cert)


def _openssl_sha1(cert_file: Path, key_file: Path, *, cn: str, bits: int, days: float) -> Chain:
    """cryptography refuses to sign with SHA-1, so legacy certificates come from openssl."""
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", f"rsa:{bits}", "-sha1", "-nodes",
            "-subj", f"/CN={cn}", "-days", str(max(1, int(days))),
            "-keyout", str(key_file), "-out", str(cert_file),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return Chain(cert_file, key_file, cert_file, (der(cert),), cert)


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)


def openssl_chain(
    directory: Path,
    *,
    name: str,
    cn: str = "localhost",
    leaf_bits: int = 2048,
    leaf_hash: str = "sha256",
    v1_intermediate: bool = False,
) -> Chain:
    """A root CA and a leaf for ``cn`` signed by openssl, which can do what cryptography
    refuses: a SHA-1 signature, an RSA-1024 key, a version 1 intermediate CA (no extensions,
    so no basicConstraints) between them. The server presents the leaf (and the intermediate)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        directory, "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes", "-days", "365",
        "-subj", f"/CN={name} Test Root CA", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt",
    )  # fmt: skip
    issuer = f"{name}-ca"
    if v1_intermediate:
        _openssl(
            directory, "req", "-new", "-newkey", "rsa:2048", "-nodes",
            "-subj", f"/CN={name} Test V1 CA", "-keyout", f"{name}-v1.key",
            "-out", f"{name}-v1.csr",
        )  # fmt: skip
        _openssl(
            directory, "x509", "-req", "-in", f"{name}-v1.csr", "-CA", f"{name}-ca.crt",
            "-CAkey", f"{name}-ca.key", "-set_serial", "2", "-days", "365",
            "-out", f"{name}-v1.crt",
        )  # fmt: skip
        issuer = f"{name}-v1"
    (directory / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
    _openssl(
        directory, "req", "-new", "-newkey", f"rsa:{leaf_bits}", "-nodes", "-subj", f"/CN={cn}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr",
    )  # fmt: skip
    _openssl(
        directory, "x509", "-req", f"-{leaf_hash}", "-in", f"{name}.csr",
        "-CA", f"{issuer}.crt", "-CAkey", f"{issuer}.key", "-set_serial", "3", "-days", "90",
        "-extfile", f"{name}.ext", "-out", f"{name}-leaf.crt",
    )  # fmt: skip
    presented = [(directory / f"{name}-leaf.crt").read_bytes()]
    if v1_intermediate:
        presented.append((directory / f"{name}-v1.crt").read_bytes())
    cert_file = directory / f"{name}.crt"
    cert_file.write_bytes(b"".join(presented))
    certs = [x509.load_pem_x509_certificate(p) for p in presented]
    return Chain(
        cert_file, directory / f"{name}.key", directory / f"{name}-ca.crt",
        tuple(der(c) for c in certs), certs[0],
    )  # fmt: skip
