"""Offline checks of a presented chain (SPEC section 4a): whether it leads to a trust anchor,
whether the leaf names the host probed, and the weak keys and signatures it carries.

The path is built and verified by ``cryptography.x509.verification`` through the presented
certificates only (no AIA fetch, no OCSP, no CRL). Its extension rules are those of the
Web PKI with what private CAs commonly leave out made optional (authorityKeyIdentifier, a CA's
keyUsage, the leaf's subjectAltName): what matters on an internal network is a chain of
signatures to an anchor, CA certificates that are CAs, and validity. What the verifier still
refuses (a v1 CA, a forbidden algorithm, an expired intermediate) is reported with its reason.
The message for a chain without a path names the first issuer neither presented nor trusted.

Names follow RFC 6125 as ``cryptography`` applies it (tests compare the two): a wildcard only
as the whole left-most label, matching one label; IP addresses only against IP SANs; the
common name only when the certificate has no DNS or IP SAN, which the verifier never allows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeGuard

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    ServerVerifier,
    Store,
    VerificationError,
)

from trackssl_agent.verdict.trust_store import Anchors

# The same filters as engine/certificates.py: a server's odd serial or name length is not stderr's
# business (the summary reports what it could not parse).
warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
warnings.filterwarnings("ignore", message="Attribute's length must be", category=UserWarning)

MIN_RSA_BITS = 2048
"""RSA and DSA keys under this are weak (SPEC section 4a)."""
MIN_EC_BITS = 224
"""Elliptic-curve keys under this are weak."""
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)
_WEAK_OIDS = {
    "1.2.840.113549.1.1.2": "MD2",  # md2WithRSAEncryption: cryptography cannot name its hash
    "1.2.840.113549.1.1.3": "MD4",
    "1.2.840.113549.1.1.4": "MD5",
    "1.2.840.113549.1.1.5": "SHA-1",
    "1.2.840.10040.4.3": "SHA-1",  # dsa-with-sha1
    "1.2.840.10045.4.1": "SHA-1",  # ecdsa-with-SHA1
}
_NAMES_SHOWN = 5
"""A name-mismatch message lists at most this many of the certificate's names."""


def _ku_for_ca(_policy: Policy, _cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("a CA whose keyUsage does not allow certificate signing")


def _eku_for_server(
    _policy: Policy, _cert: x509.Certificate, usage: x509.ExtendedKeyUsage | None
) -> None:
    allowed = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if usage is not None and not allowed & set(usage):
        raise ValueError("extendedKeyUsage does not allow TLS server authentication")


def _policies() -> tuple[ExtensionPolicy, ExtensionPolicy, ExtensionPolicy]:
    """The CA and leaf extension policies: the Web PKI's, with what private CAs leave out
    made optional (see the module docstring); then the leaf's for a name checked by the
    verifier, which needs the subjectAltName it matches against."""
    agnostic = Criticality.AGNOSTIC
    # The path is built by the client verifier (it checks no name: names are judged apart,
    # the common name included), so its purpose, client authentication, is replaced by the
    # server's wherever an extendedKeyUsage is present, in the CAs as in the leaf.
    ca = (
        ExtensionPolicy.webpki_defaults_ca()
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
        .may_be_present(x509.KeyUsage, agnostic, _ku_for_ca)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _eku_for_server)
    )
    named = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
        .may_be_present(x509.KeyUsage, agnostic, None)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _eku_for_server)
    )
    leaf = named.may_be_present(x509.SubjectAlternativeName, agnostic, None)
    return ca, leaf, named


def der_of(cert: x509.Certificate) -> bytes:
    """The DER bytes of ``cert``."""
    return cert.public_bytes(Encoding.DER)


def name_text(name: x509.Name) -> str:
    """``CN=...`` of a name, or a placeholder when it cannot be decoded."""
    try:
        return name.rfc4514_string()
    except Exception:  # a name cryptography parsed lazily and cannot decode
        return "(an undecodable name)"


def subject_text(cert: x509.Certificate) -> str:
    """The subject of ``cert`` as ``CN=...``."""
    try:
        return name_text(cert.subject)
    except Exception:
        return "(an undecodable name)"


class TrustContext:
    """The anchors made ready for path building: the verifier's store and an index by
    subject for the messages. Built once per command."""

    def __init__(self, anchors: Anchors) -> None:
        self.anchors = anchors
        self.store = Store(list(anchors.certs)) if anchors.certs else None
        self.subjects: set[x509.Name] = set()
        self.ders: set[bytes] = set()
        for cert in anchors.certs:
            with contextlib.suppress(Exception):  # an anchor whose name cannot be read
                self.subjects.add(cert.subject)
            self.ders.add(der_of(cert))
        self.ca_policy, self.leaf_policy, self.named_leaf_policy = _policies()


@dataclass(frozen=True)
class Trust:
    """Whether the chain leads to an anchor, and if not, why."""

    verified: bool
    why: str | None = None
    path: tuple[x509.Certificate, ...] = ()
    """The verified path, leaf to anchor (empty when not verified)."""


def _clean(reason: str) -> str:
    """The verifier's reason without its prefixes, Rust debug output or object reprs."""
    text = re.sub(r"\s*\(encountered processing <Certificate\(.*$", "", reason, flags=re.DOTALL)
    text = re.sub(r"^(validation failed: |candidates exhausted: )+", "", text)
    text = re.sub(r"Python extension validator failed: \w+: ", "", text)
    text = re.sub(
        r"Forbidden (signature|public key) algorithm: .*", r"forbidden \1 algorithm", text
    )
    return text.strip() or "refused"


def _walk(
    leaf: x509.Certificate, presented: Sequence[x509.Certificate], ctx: TrustContext
) -> str | None:
    """Why the names lead to no anchor (the first issuer neither presented nor trusted, or a
    self-signed end); None when they do lead to one."""
    current = leaf
    visited = {id(leaf)}
    while True:
        if der_of(current) in ctx.ders or current.issuer in ctx.subjects:
            return None
        if current.issuer == current.subject:
            if current is leaf:
                return "the leaf is self-signed and not trusted"
            root = subject_text(current)
            return f"the chain ends at {root!r}, a self-signed root that is not trusted"
        issuer = next(
            (c for c in presented if id(c) not in visited and c.subject == current.issuer), None
        )
        if issuer is None:
            return (
                f"issuer {name_text(current.issuer)!r} is neither presented nor trusted "
                "(an intermediate the server should send, or a CA to add with --ca-file)"
            )
        visited.add(id(issuer))
        current = issuer


def check_trust(
    leaf: x509.Certificate, presented: Sequence[x509.Certificate], ctx: TrustContext, at: datetime
) -> Trust:
    """Whether a path leads from ``leaf`` through ``presented`` to an anchor at time ``at``."""
    reason = None
    if ctx.store is not None:
        builder = (
            PolicyBuilder()
            .store(ctx.store)
            .time(at)
            .extension_policies(ca_policy=ctx.ca_policy, ee_policy=ctx.leaf_policy)
        )
        try:
            verified = builder.build_client_verifier().verify(leaf, list(presented))
        except VerificationError as exc:
            reason = _clean(str(exc))
        else:
            return Trust(verified=True, path=tuple(verified.chain))
    try:
        walked = _walk(leaf, presented, ctx)
    except Exception as exc:  # a name that cannot be compared: say so, judge the rest
        walked = f"the chain cannot be followed ({type(exc).__name__}: {exc})"
    if walked is not None:
        return Trust(verified=False, why=walked)
    return Trust(verified=False, why=f"a path to a trusted CA exists but is refused: {reason}")


@dataclass(frozen=True)
class VerifiedIssuer:
    """A CA certificate met as the leaf's issuer in a verified path, ready to verify further
    leaves it issued: a path through it to an anchor holds while ``not_before <= time <=
    not_after`` (every certificate from it to the anchor valid), whatever leaf hangs below."""

    store: Store
    not_before: datetime
    not_after: datetime


def verified_issuer(path: Sequence[x509.Certificate]) -> VerifiedIssuer | None:
    """The leaf's issuer in the verified ``path`` (leaf to anchor), or None when a further leaf
    could not be verified against the issuer alone with the same result: the leaf is the
    anchor, or a certificate above it constrains names (which would bind the next leaf too)."""
    if len(path) < 2:
        return None
    above = path[1:]
    for cert in above:
        try:
            cert.extensions.get_extension_for_class(x509.NameConstraints)
        except x509.ExtensionNotFound:
            continue
        return None
    start = max(c.not_valid_before_utc for c in above)
    end = min(c.not_valid_after_utc for c in above)
    if start > end:
        return None
    return VerifiedIssuer(Store([path[1]]), start, end)


def verified_under(
    leaf: x509.Certificate,
    issuer: VerifiedIssuer,
    ctx: TrustContext,
    at: datetime,
    *,
    name: str | None = None,
) -> bool:
    """Whether ``leaf`` verifies at ``at`` with ``issuer`` as its only anchor: the leaf's own
    signature, validity and extensions, the path above already known good at ``at``; with
    ``name``, also that one of its subjectAltNames matches it (RFC 6125 as the verifier applies
    it: a match there is a match for ``name_problem`` too, tests compare the two). A refusal
    says nothing (``check_trust`` and ``name_problem`` then judge, and word why)."""
    if not issuer.not_before <= at <= issuer.not_after:
        return False
    builder = PolicyBuilder().store(issuer.store).time(at)
    try:
        if name is None:
            verifier: ClientVerifier | ServerVerifier = builder.extension_policies(
                ca_policy=ctx.ca_policy, ee_policy=ctx.leaf_policy
            ).build_client_verifier()
        else:
            address = _ip(name) if _looks_like_ip(name) else None
            subject = x509.IPAddress(address) if address is not None else x509.DNSName(name)
            verifier = builder.extension_policies(
                ca_policy=ctx.ca_policy, ee_policy=ctx.named_leaf_policy
            ).build_server_verifier(subject)
        verifier.verify(leaf, [])
    except (VerificationError, ValueError, TypeError):  # ValueError: a name it cannot take
        return False
    return True


def _dns_matches(pattern: str, reference: str) -> bool:
    pattern, reference = pattern.lower(), reference.lower()
    if pattern == reference:
        return not pattern.endswith(".")
    if not pattern.startswith("*.") or "*" in pattern[2:] or pattern.endswith("."):
        return False
    head, dot, rest = reference.partition(".")
    return bool(head and dot) and rest == pattern[2:]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _looks_like_ip(text: str) -> bool:
    # Cheaper than letting ipaddress raise for every host name.
    return ":" in text or text.replace(".", "").isdigit()


def name_problem(leaf: x509.Certificate, reference: str) -> str | None:
    """Why ``reference`` (the SNI sent, or the address probed) is not a name of ``leaf``; None
    when it is."""
    address = _ip(reference) if _looks_like_ip(reference) else None
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    except Exception as exc:
        return f"its subjectAltName cannot be read ({type(exc).__name__})"
    dns: list[str] = sans.get_values_for_type(x509.DNSName) if sans is not None else []
    if address is None and any(_dns_matches(name, reference) for name in dns):
        return None
    ips = sans.get_values_for_type(x509.IPAddress) if sans is not None else []
    if address is not None and address in ips:
        return None
    what = "address" if address is not None else "name"
    if dns or ips:
        shown = [*dns, *(str(ip) for ip in ips)]
    else:
        # No DNS or IP SAN: the common name, as clients did before SANs.
        try:
            shown = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        except Exception:
            shown = []
        if not shown:
            return (
                f"{what} {reference} cannot match: the certificate has no subjectAltName "
                "and no common name"
            )
        if address is not None and any(_ip(cn) == address for cn in shown):
            return None
        if address is None and any(_dns_matches(cn, reference) for cn in shown):
            return None
    listed = ", ".join(shown[:_NAMES_SHOWN]) + (", ..." if len(shown) > _NAMES_SHOWN else "")
    return f"{what} {reference} is not among the certificate's names ({listed})"


def _is_dsa(key: object) -> TypeGuard[dsa.DSAPublicKey]:
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return False
    # Naming the DSA class warns that DSA is deprecated: not news to a monitoring run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return isinstance(key, dsa.DSAPublicKey)


def weak_key(cert: x509.Certificate) -> str | None:
    """Why ``cert``'s public key is weak, or None."""
    try:
        key = cert.public_key()
    except Exception:
        return None  # an unknown key type is not judged weak
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"{subject_text(cert)} has an RSA {key.key_size}-bit key (under {MIN_RSA_BITS})"
    if _is_dsa(key) and key.key_size < MIN_RSA_BITS:
        return f"{subject_text(cert)} has a DSA {key.key_size}-bit key (under {MIN_RSA_BITS})"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < MIN_EC_BITS:
        return f"{subject_text(cert)} has an EC {key.curve.key_size}-bit key (under {MIN_EC_BITS})"
    return None


_RSASSA_PSS = "1.2.840.113549.1.1.10"
"""PSS names its hash in parameters: only for it is the hash read from the certificate."""


def weak_signature(cert: x509.Certificate) -> str | None:
    """Why ``cert``'s signature is weak (MD5, SHA-1 or older) unless it is self-signed, whose
    signature nobody relies on; else None."""
    oid = cert.signature_algorithm_oid.dotted_string
    weak: str | None = _WEAK_OIDS.get(oid)
    if weak is None and oid == _RSASSA_PSS:
        try:
            algorithm = cert.signature_hash_algorithm
        except (UnsupportedAlgorithm, ValueError):
            algorithm = None
        if isinstance(algorithm, _WEAK_HASHES):
            weak = "SHA-1" if isinstance(algorithm, hashes.SHA1) else "MD5"
    if weak is None:
        return None
    try:
        if cert.issuer == cert.subject:
            return None
    except Exception:
        return None
    return f"{subject_text(cert)} is signed with {weak}"
