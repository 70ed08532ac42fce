"""Probe results as OpenMetrics 1.0 text, for Prometheus and the node exporter's textfile
collector: one gauge family per fact, label values escaped, ``# EOF`` at the end.

The ``_info`` families are gauges of value 1, not the OpenMetrics ``info`` type: the textfile
collector reads the Prometheus 0.0.4 text format, whose parser rejects the whole file on
``# TYPE ... info`` (prometheus/node_exporter#1988), while a gauge named ``*_info`` is valid in
both formats. It also fits: a target's TLS version or error kind changes between runs, which
the ``info`` type says it should not. ``# UNIT`` and ``# EOF`` are comments to 0.0.4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from trackssl_agent.engine import certificates
from trackssl_agent.engine.results import CertSummary, ProbeResult

if TYPE_CHECKING:
    from trackssl_agent.verdict.judge import Verdict

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
"""What an HTTP server would send this text as."""

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Family:
    """A metric family's metadata: its name is also its samples' name (gauges only)."""

    name: str
    help: str
    unit: str = ""
    """``seconds`` or empty; when set, ``name`` ends in ``_`` + unit (OpenMetrics requires it)."""


SUCCESS = Family("trackssl_probe_success", "1 when the certificate chain was retrieved, else 0.")
DURATION = Family(
    "trackssl_probe_duration_seconds", "How long the probe of the target took.", "seconds"
)
ERROR = Family("trackssl_probe_error_info", "Why a target could not be probed; always 1.")
NOT_AFTER = Family(
    "trackssl_cert_not_after_seconds",
    "When the certificate expires (Unix time); depth 0 is the leaf.",
    "seconds",
)
NOT_BEFORE = Family(
    "trackssl_cert_not_before_seconds",
    "When the certificate becomes valid (Unix time); depth 0 is the leaf.",
    "seconds",
)
TLS_VERSION = Family("trackssl_tls_version_info", "The TLS version negotiated; always 1.")
STATUS = Family(
    "trackssl_probe_status", "The target's status: 0 OK, 1 WARNING, 2 CRITICAL (the exit codes)."
)
VERIFIED = Family(
    "trackssl_chain_verified", "1 when the presented chain leads to a trust anchor, else 0."
)

FAMILIES = (SUCCESS, DURATION, ERROR, NOT_AFTER, NOT_BEFORE, TLS_VERSION, STATUS, VERIFIED)
"""Every family, in the order rendered; each is written even when it has no sample."""


def escape_label_value(value: str) -> str:
    """``value`` as it goes between the quotes of a label: backslash, double quote and line
    feed escaped (the only escapes the format defines); text that is not valid UTF-8 (a lone
    surrogate) becomes ``?`` so the output can always be encoded."""
    text = value.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a decimal point, ``NaN`` for unknown, else Python's
    shortest round-tripping form (``0.0125``, ``1e-05``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(labels: Labels) -> str:
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)
    return "{" + inner + "}"


def render_family(family: Family, samples: Iterable[Sample]) -> list[str]:
    """The lines of one family: TYPE, UNIT (if any), HELP, then a line per sample."""
    lines = [f"# TYPE {family.name} gauge"]
    if family.unit:
        lines.append(f"# UNIT {family.name} {family.unit}")
    lines.append(f"# HELP {family.name} {_help_text(family.help)}")
    lines += [f"{family.name}{_labels(labels)} {format_value(value)}" for labels, value in samples]
    return lines


def unix_time(value: datetime | None) -> float:
    """Seconds since 1970 (negative before it), NaN when the date could not be parsed."""
    if value is None:
        return math.nan
    return (value - _EPOCH) / timedelta(seconds=1)


@dataclass(frozen=True)
class _Cert:
    target: str
    depth: int
    summary: CertSummary

    def labels(self) -> Labels:
        cert = self.summary
        return (
            ("target", self.target),
            ("depth", str(self.depth)),
            ("subject", cert.subject or ""),
            ("issuer", cert.issuer or ""),
            ("serial", cert.serial or ""),
            ("sha256", cert.sha256),
        )


_STATUS_VALUES = {"OK": 0.0, "WARNING": 1.0, "CRITICAL": 2.0}


def _first_per_target(
    results: Iterable[ProbeResult], verdicts: Sequence[Verdict | None]
) -> list[tuple[ProbeResult, Verdict | None]]:
    """One result per TARGET text: a family must not hold two samples with the same labels
    (Prometheus would reject the exposition), so a target listed twice is shown once."""
    seen: set[str] = set()
    unique: list[tuple[ProbeResult, Verdict | None]] = []
    for index, result in enumerate(results):
        if result.target.text not in seen:
            seen.add(result.target.text)
            unique.append((result, verdicts[index] if index < len(verdicts) else None))
    return unique


def _summary(der: bytes, cache: dict[bytes, CertSummary]) -> CertSummary:
    """``der``'s summary, parsed once per rendering: intermediates are shared by many
    targets, and parsing is most of the rendering time."""
    if der not in cache:
        cache[der] = certificates.summarize(der)
    return cache[der]


def render(results: Iterable[ProbeResult], verdicts: Sequence[Verdict | None] = ()) -> str:
    """The OpenMetrics exposition of ``results`` (with their ``verdicts``, in the same order,
    when judged), ending in ``# EOF\\n``; never raises on what a server presented (an
    unreadable certificate field is an empty label value, an unreadable date the value NaN)."""
    pairs = _first_per_target(results, verdicts)
    probed = [result for result, _verdict in pairs]
    judged = [(result, verdict) for result, verdict in pairs if verdict is not None]
    retrieved = [r for r in probed if r.ok]
    summaries: dict[bytes, CertSummary] = {}
    certs = [
        _Cert(r.target.text, depth, _summary(der, summaries))
        for r in retrieved
        for depth, der in enumerate(r.chain)
    ]
    samples: dict[Family, Sequence[Sample]] = {
        SUCCESS: [((("target", r.target.text),), 1.0 if r.ok else 0.0) for r in probed],
        DURATION: [((("target", r.target.text),), round(r.elapsed_ms / 1000, 6)) for r in probed],
        ERROR: [
            ((("target", r.target.text), ("kind", r.error.kind.value)), 1.0)
            for r in probed
            if r.error is not None
        ],
        NOT_AFTER: [(c.labels(), unix_time(c.summary.not_after)) for c in certs],
        NOT_BEFORE: [(c.labels(), unix_time(c.summary.not_before)) for c in certs],
        TLS_VERSION: [
            ((("target", r.target.text), ("version", r.tls_version or "")), 1.0) for r in retrieved
        ],
        STATUS: [((("target", r.target.text),), _STATUS_VALUES[v.status]) for r, v in judged],
        VERIFIED: [
            ((("target", r.target.text),), 1.0 if v.chain_verified else 0.0) for r, v in judged
        ],
    }
    lines = [line for family in FAMILIES for line in render_family(family, samples[family])]
    return "\n".join([*lines, "# EOF"]) + "\n"
