"""Rendering results: the JSON of SPEC section 4, the human summary, and PEM.

The human summary shows text from outside (certificate names and SANs, server words in
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


def warning_text(result: ProbeResult, summary: CertSummary | None) -> str | None:
    """All warnings of a result (handshake and parsing) as one string, or None."""
    notes = list(result.warnings) + list(summary.warnings if summary else ())
    return "; ".join(notes) if notes else None


def summary_of(result: ProbeResult) -> CertSummary | None:
    """The leaf summary, or None when nothing was retrieved."""
    return certificates.summarize(result.chain[0]) if result.chain else None


def _certificate_json(summary: CertSummary, now: datetime) -> dict[str, Any]:
    return {
        "subject": summary.subject,
        "issuer": summary.issuer,
        "serial": summary.serial,
        "sha256": summary.sha256,
        "not_before": iso(summary.not_before),
        "not_after": iso(summary.not_after),
        "days_remaining": summary.days_remaining(now),
        "sans": list(summary.sans) if summary.sans is not None else None,
        "key": summary.key,
        "signature_algorithm": summary.signature_algorithm,
        "self_signed": summary.self_signed,
    }


def result_json(result: ProbeResult, now: datetime) -> dict[str, Any]:
    """One object of SPEC section 4, plus ``warning`` (null when there is none)."""
    summary = summary_of(result)
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
        "certificate": _certificate_json(summary, now) if summary and result.ok else None,
        "elapsed_ms": round(result.elapsed_ms, 1),
        "warning": warning_text(result, summary),
    }


def render_pem(result: ProbeResult) -> str:
    """The presented chain as PEM, leaf first, nothing else."""
    return "".join(certificates.to_pem(der) for der in result.chain)


def _chain_line(der: bytes) -> str:
    summary = certificates.summarize(der)
    return printable(f"{summary.subject or '?'}  (issued by {summary.issuer or '?'})")


def render_text(result: ProbeResult, now: datetime) -> str:
    """A readable multi-line summary of one result."""
    target = result.target
    if not result.ok:
        assert result.error is not None
        return (
            printable(f"{target.text}  FAILED  {result.error}  ({result.elapsed_ms:.0f} ms)") + "\n"
        )
    summary = summary_of(result)
    assert summary is not None
    via = f"STARTTLS {target.starttls.value}, " if target.starttls else ""
    sni = f"SNI {result.servername}" if result.servername else "no SNI"
    days = summary.days_remaining(now)
    left = (
        "unknown"
        if days is None
        else (f"EXPIRED {-days} days ago" if days < 0 else f"{days} days left")
    )
    lines = [
        f"{target.text}  OK  ({result.elapsed_ms:.0f} ms)",
        f"  address     {result.address} ({sni})",
        f"  protocol    {via}{result.tls_version or '?'} {result.cipher or ''}".rstrip(),
        f"  subject     {printable(str(summary.subject))}",
        f"  SANs        {printable(', '.join(summary.sans)) if summary.sans else '-'}",
        f"  issuer      {printable(str(summary.issuer))}",
        f"  valid       {iso(summary.not_before)} -> {iso(summary.not_after)} ({left})",
        f"  key         {summary.key}, {summary.signature_algorithm}"
        + (", self-signed" if summary.self_signed else ""),
        f"  serial      {summary.serial}",
        f"  sha256      {summary.sha256}",
    ]
    for index, der in enumerate(result.chain, start=1):
        label = "chain" if index == 1 else ""
        lines.append(f"  {label:<10}  {index}. {_chain_line(der)}")
    warning = warning_text(result, summary)
    if warning:
        lines.append(f"  warning     {printable(warning)}")
    return "\n".join(lines) + "\n"
