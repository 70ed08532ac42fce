"""Rendering results: the JSON of SPEC section 4, the readable text, and PEM.

The readable text shows text from outside (certificate names and SANs, server words in
errors) only through ``log.printable``: a CR, LF or ESC there must not rewrite the screen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from trackssl_agent import certificates
from trackssl_agent.log import printable
from trackssl_agent.results import CertSummary, ProbeResult, utc_iso


def iso(value: datetime | None) -> str | None:
    """``2026-01-01T00:00:00Z`` or None."""
    return None if value is None else utc_iso(value)


def warning_text(result: ProbeResult, leaf: CertSummary | None) -> str | None:
    """All warnings of a result (handshake and parsing) as one string, or None."""
    notes = list(result.warnings) + list(leaf.warnings if leaf else ())
    return "; ".join(notes) if notes else None


def leaf_summary(result: ProbeResult) -> CertSummary | None:
    """The leaf certificate's CertSummary, or None when nothing was retrieved."""
    return certificates.summarize(result.chain[0]) if result.chain else None


def _certificate_json(leaf: CertSummary, now: datetime) -> dict[str, Any]:
    return {
        "subject": leaf.subject,
        "issuer": leaf.issuer,
        "serial": leaf.serial,
        "sha256": leaf.sha256,
        "not_before": iso(leaf.not_before),
        "not_after": iso(leaf.not_after),
        "days_remaining": leaf.days_remaining(now),
        "sans": list(leaf.sans) if leaf.sans is not None else None,
        "key": leaf.key,
        "signature_algorithm": leaf.signature_algorithm,
        "self_signed": leaf.self_signed,
    }


def result_json(result: ProbeResult, now: datetime) -> dict[str, Any]:
    """One object of SPEC section 4, plus ``warning`` (null when there is none)."""
    leaf = leaf_summary(result)
    target = result.target
    return {
        "target": target.text,
        "host": target.host,
        "port": target.port,
        "starttls": target.starttls.value if target.starttls else None,
        "servername": result.servername,
        "address": result.address,
        "ok": result.ok,
        "error": (
            {"kind": result.error.kind.value, "message": result.error.message}
            if result.error
            else None
        ),
        "tls_version": result.tls_version,
        "cipher": result.cipher,
        "chain": [certificates.to_pem(der) for der in result.chain] if result.ok else [],
        "certificate": _certificate_json(leaf, now) if leaf and result.ok else None,
        "elapsed_ms": round(result.elapsed_ms, 1),
        "warning": warning_text(result, leaf),
    }


def render_pem(result: ProbeResult) -> str:
    """The presented chain as PEM, leaf first, nothing else."""
    return "".join(certificates.to_pem(der) for der in result.chain)


def _chain_line(der: bytes) -> str:
    cert = certificates.summarize(der)
    return printable(f"{cert.subject or '?'}  (issued by {cert.issuer or '?'})")


def render_text(result: ProbeResult, now: datetime) -> str:
    """One result as readable lines: the leaf certificate's fields and the chain."""
    target = result.target
    leaf = leaf_summary(result)
    if not result.ok or leaf is None:
        # ok means a chain was retrieved, so no leaf comes only with an error to show.
        error = result.error or "no certificate was retrieved"
        return printable(f"{target.text}  FAILED  {error}  ({result.elapsed_ms:.0f} ms)") + "\n"
    via = f"STARTTLS {target.starttls.value}, " if target.starttls else ""
    sni = f"SNI {result.servername}" if result.servername else "no SNI"
    days = leaf.days_remaining(now)
    left = (
        "unknown"
        if days is None
        else (f"EXPIRED {-days} days ago" if days < 0 else f"{days} days left")
    )
    lines = [
        f"{target.text}  OK  ({result.elapsed_ms:.0f} ms)",
        f"  address     {result.address} ({sni})",
        f"  protocol    {via}{result.tls_version or '?'} {result.cipher or ''}".rstrip(),
        f"  subject     {printable(str(leaf.subject))}",
        f"  SANs        {printable(', '.join(leaf.sans)) if leaf.sans else '-'}",
        f"  issuer      {printable(str(leaf.issuer))}",
        f"  valid       {iso(leaf.not_before)} -> {iso(leaf.not_after)} ({left})",
        f"  key         {leaf.key}, {leaf.signature_algorithm}"
        + (", self-signed" if leaf.self_signed else ""),
        f"  serial      {leaf.serial}",
        f"  sha256      {leaf.sha256}",
    ]
    for index, der in enumerate(result.chain, start=1):
        label = "chain" if index == 1 else ""
        lines.append(f"  {label:<10}  {index}. {_chain_line(der)}")
    warning = warning_text(result, leaf)
    if warning:
        lines.append(f"  warning     {printable(warning)}")
    return "\n".join(lines) + "\n"
