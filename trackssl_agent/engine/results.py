"""The values a probe produces: ProbeResult, its error kinds, and the certificate summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from trackssl_agent.engine.targets import Target


def utc_iso(value: datetime) -> str:
    """``2026-11-27T12:00:00Z``: the one timestamp form of the JSON output and the API."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ErrorKind(StrEnum):
    """Why a target could not be probed (SPEC section 4)."""

    DNS = "dns"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    RESET = "reset"
    UNREACHABLE = "unreachable"
    NOT_TLS = "not_tls"
    HANDSHAKE = "handshake"
    STARTTLS = "starttls"
    DENIED = "denied"


@dataclass(frozen=True)
class ProbeError:
    """A classified failure with a message an operator can act on."""

    kind: ErrorKind
    message: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


@dataclass(frozen=True)
class CertSummary:
    """What a person wants to know about the leaf; a field that could not be read is None."""

    subject: str | None
    issuer: str | None
    serial: str | None
    """Lowercase hex; a leading ``-`` for a (non-conforming) negative serial."""
    sha256: str
    """Lowercase hex of the DER, no colons: computed from the bytes, so never None."""
    not_before: datetime | None
    not_after: datetime | None
    sans: tuple[str, ...] | None
    key: str | None
    """``RSA 2048``, ``EC P-256``, ``Ed25519``..."""
    signature_algorithm: str | None
    self_signed: bool | None
    warnings: tuple[str, ...] = ()
    """What could not be parsed, for the result's ``warning``."""

    def days_remaining(self, now: datetime) -> int | None:
        """Whole days until ``not_after`` (negative once expired), or None if unknown."""
        if self.not_after is None:
            return None
        return int((self.not_after - now).total_seconds() // 86400)


@dataclass(frozen=True)
class ProbeResult:
    """Everything one probe learned: the presented chain or a classified error."""

    target: Target
    servername: str | None
    """The SNI sent, or None."""
    address: str | None
    """The IP address connected to, or None if none was reached."""
    probed_at: datetime
    """When the probe started (UTC)."""
    elapsed_ms: float
    chain: tuple[bytes, ...] = ()
    """DER of every certificate presented, leaf first."""
    tls_version: str | None = None
    cipher: str | None = None
    error: ProbeError | None = None
    warnings: tuple[str, ...] = field(default=())
    """Why a handshake broke off after the certificates arrived, and similar notes."""

    @property
    def ok(self) -> bool:
        """True when the chain was retrieved."""
        return self.error is None
