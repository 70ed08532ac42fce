"""Rendering results: the JSON of SPEC section 4, the readable text, and PEM.

The readable text shows text from outside (certificate names and SANs, server words in
errors) only through ``log.printable``: a CR, LF or ESC there must not rewrite the screen.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from trackssl_agent.engine import certificates
from trackssl_agent.engine.results import CertSummary, ProbeResult, utc_iso
from trackssl_agent.log import printable

if TYPE_CHECKING:  # judged output only: the API path (check-once --dry-run) never judges
    from trackssl_agent.verdict.judge import Verdict


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


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    """``status`` and ``problems`` (SPEC section 4a)."""
    return {
        "status": verdict.status.value,
        "problems": [
            {"kind": p.kind.value, "severity": p.severity.value, "message": p.message}
            for p in verdict.problems
        ],
    }


def result_json(
    result: ProbeResult, now: datetime, verdict: Verdict | None = None
) -> dict[str, Any]:
    """One object of SPEC section 4, plus ``warning`` (null when there is none), and
    ``status`` and ``problems`` when the result was judged (probe and local mode)."""
    leaf = leaf_summary(result)
    target = result.target
    judged = verdict_json(verdict) if verdict is not None else {}
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
        **judged,
    }


def render_pem(result: ProbeResult) -> str:
    """The presented chain as PEM, leaf first, nothing else."""
    return "".join(certificates.to_pem(der) for der in result.chain)


_CHAIN_LINES: dict[bytes, str] = {}
"""Each presented certificate's chain line, made once: intermediates repeat across targets,
and a summary is most of a target's rendering time. Bounded, then forgotten at once."""


def _chain_line(der: bytes, cert: CertSummary | None = None) -> str:
    line = _CHAIN_LINES.get(der)
    if line is None:
        cert = cert or certificates.summarize(der)
        line = printable(f"{cert.subject or '?'}  (issued by {cert.issuer or '?'})")
        if len(_CHAIN_LINES) >= 4096:
            _CHAIN_LINES.clear()
        _CHAIN_LINES[der] = line
    return line


def problems_line(verdict: Verdict) -> str:
    """Every problem of a verdict, notes included, on one line."""
    if not verdict.problems:
        return "none"
    return "; ".join(f"{p.kind.value} ({p.severity.value}): {p.message}" for p in verdict.problems)


def render_text(result: ProbeResult, now: datetime, verdict: Verdict | None = None) -> str:
    """One result as readable lines: with a verdict ``TARGET  STATUS  WHY`` and the problems
    first (SPEC section 4a), then the leaf certificate's fields and the chain."""
    target = result.target
    leaf = leaf_summary(result)
    head: list[str] = []
    if verdict is not None:
        head = [
            printable(f"{target.text}  {verdict.status.value}  {verdict.why}"),
            "  problems    " + printable(problems_line(verdict)),
        ]
    if not result.ok or leaf is None:
        # ok means a chain was retrieved, so no leaf comes only with an error to show.
        error = result.error or "no certificate was retrieved"
        if head:
            return "\n".join([*head, f"  elapsed     {result.elapsed_ms:.0f} ms"]) + "\n"
        return printable(f"{target.text}  FAILED  {error}  ({result.elapsed_ms:.0f} ms)") + "\n"
    via = f"STARTTLS {target.starttls.value}, " if target.starttls else ""
    sni = f"SNI {result.servername}" if result.servername else "no SNI"
    days = leaf.days_remaining(now)
    # Whole days since expiry count down from the date, as the verdict's "N days ago" does.
    ago = (now - leaf.not_after).days if leaf.not_after is not None else 0
    left = (
        "unknown"
        if days is None
        else (f"EXPIRED {ago} days ago" if days < 0 else f"{days} days left")
    )
    first = head or [printable(f"{target.text}  OK  ({result.elapsed_ms:.0f} ms)")]
    lines = [
        *first,
        f"  address     {result.address} ({sni})"
        + (f", {result.elapsed_ms:.0f} ms" if head else ""),
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
        summary = leaf if index == 1 else None  # the leaf is summarized already
        lines.append(f"  {label:<10}  {index}. {_chain_line(der, summary)}")
    warning = warning_text(result, leaf)
    if warning:
        lines.append(f"  warning     {printable(warning)}")
    return "\n".join(lines) + "\n"
