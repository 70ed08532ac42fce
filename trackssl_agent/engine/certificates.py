"""Pure summaries of DER certificates; a field that does not parse becomes None plus a warning.

Retrieval never depends on this module: a certificate strict parsers reject is still
reported, only its summary is partial.
"""

from __future__ import annotations

import hashlib
import ssl
import warnings as pywarnings
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

from trackssl_agent.engine.results import CertSummary

if TYPE_CHECKING:
    from cryptography import x509

T = TypeVar("T")

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


@cache
def _x509() -> ModuleType:
    """``cryptography.x509``, imported on first use: ``--version``, ``--help`` and the API
    path (which needs only ``to_pem``) never pay its import time and memory."""
    from cryptography import x509  # noqa: PLC0415 - lazy on purpose, see above
    from cryptography.utils import CryptographyDeprecationWarning  # noqa: PLC0415

    # Non-conforming serials are reported through our own warning instead (see summarize).
    pywarnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    # A server's out-of-range name lengths would print a Python warning to stderr; the name
    # is still shown, and stderr is no place for text about one certificate.
    pywarnings.filterwarnings("ignore", message="Attribute's length must be", category=UserWarning)
    return x509


def to_pem(der: bytes) -> str:
    """PEM text of one DER certificate."""
    return ssl.DER_cert_to_PEM_cert(der)


def sha256_hex(der: bytes) -> str:
    """Lowercase hex SHA-256 of the DER bytes, no colons."""
    return hashlib.sha256(der).hexdigest()


def _field(name: str, read: Callable[[], T], warnings: list[str]) -> T | None:
    try:
        return read()
    except Exception as exc:
        warnings.append(f"certificate {name} could not be parsed ({type(exc).__name__}: {exc})")
        return None


def _key_description(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa  # noqa: PLC0415

    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    x509 = _x509()
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = [str(n) for n in ext.value.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def _self_signed(cert: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm  # noqa: PLC0415

    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Legacy signatures (SHA-1, MD5) cannot be checked here; matching names decide.
        return True
    return True


def _conformance(cert: x509.Certificate) -> list[str]:
    try:
        serial = cert.serial_number
    except Exception:
        return []
    if serial <= 0:
        return ["certificate serial number is not positive (RFC 5280 forbids it)"]
    return []


def serial_hex(number: int) -> str:
    """A serial number as ``openssl x509 -serial`` writes it, lowercase: whole bytes, so an
    even number of hex digits (``0a1b``, never ``a1b``); ``-`` before a negative one."""
    digits = format(abs(number), "x")
    if len(digits) % 2:
        digits = "0" + digits
    return f"-{digits}" if number < 0 else digits


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def expiry(der: bytes) -> datetime | None:
    """Only ``notAfter`` (UTC), or None if unreadable: cheaper than a whole summary."""
    try:
        return _utc(_x509().load_der_x509_certificate(der).not_valid_after_utc)
    except Exception:  # unreadable means unknown, never an error
        return None


def summarize(der: bytes) -> CertSummary:
    """Summarize one DER certificate; never raises."""
    warnings: list[str] = []
    digest = sha256_hex(der)
    cert = _field("structure", lambda: _x509().load_der_x509_certificate(der), warnings)
    if cert is None:
        return CertSummary(
            subject=None, issuer=None, serial=None, sha256=digest, not_before=None,
            not_after=None, sans=None, key=None, signature_algorithm=None, self_signed=None,
            warnings=tuple(warnings),
        )  # fmt: skip
    return CertSummary(
        # The lambdas are needed: names decode on first access, which must be inside _field.
        subject=_field("subject", lambda: cert.subject.rfc4514_string(), warnings),  # noqa: PLW0108
        issuer=_field("issuer", lambda: cert.issuer.rfc4514_string(), warnings),  # noqa: PLW0108
        serial=_field("serial", lambda: serial_hex(cert.serial_number), warnings),
        sha256=digest,
        not_before=_field("not_before", lambda: _utc(cert.not_valid_before_utc), warnings),
        not_after=_field("not_after", lambda: _utc(cert.not_valid_after_utc), warnings),
        sans=_field("subjectAltName", lambda: _sans(cert), warnings),
        key=_field("public key", lambda: _key_description(cert), warnings),
        signature_algorithm=_field(
            "signature algorithm",
            lambda: cert.signature_algorithm_oid._name,
            warnings,
        ),
        self_signed=_field("self-signed check", lambda: _self_signed(cert), warnings),
        warnings=tuple(warnings + _conformance(cert)),
    )
