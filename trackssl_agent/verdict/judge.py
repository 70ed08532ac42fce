"""The verdict on one probe result in ``probe`` and local mode (SPEC section 4a): its status
(OK, WARNING, CRITICAL) and its problems, judged offline from what the target presented.

Only the judging commands import this module (and ``cryptography`` with it): ``run`` and the
API path post what they retrieved and leave the judging to the cloud.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509

from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.verdict import chain_check
from trackssl_agent.verdict.trust_store import Anchors


class Status(StrEnum):
    """A target's status, in the Nagios words; the exit code is the worst (``report``)."""

    OK = "OK"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


class Severity(StrEnum):
    """How much a problem weighs: notes never change the status."""

    CRITICAL = "critical"
    WARNING = "warning"
    NOTE = "note"


class Kind(StrEnum):
    """What is wrong (SPEC section 4a's table, in its order)."""

    FAILED = "failed"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRES_SOON = "expires_soon"
    UNTRUSTED = "untrusted"
    NAME_MISMATCH = "name_mismatch"
    WEAK_KEY = "weak_key"
    WEAK_SIGNATURE = "weak_signature"


WORDS = {
    Kind.FAILED: "failed",
    Kind.EXPIRED: "expired",
    Kind.NOT_YET_VALID: "not yet valid",
    Kind.EXPIRES_SOON: "expiring",
    Kind.UNTRUSTED: "untrusted",
    Kind.NAME_MISMATCH: "name mismatch",
    Kind.WEAK_KEY: "weak key",
    Kind.WEAK_SIGNATURE: "weak signature",
}
"""Each kind as the summary line counts it."""
_RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.NOTE: 2}
_ORDER = {kind: index for index, kind in enumerate(Kind)}
_DAY = 86400


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a target, as SPEC section 4a names it."""

    kind: Kind
    severity: Severity
    message: str


@dataclass(frozen=True)
class Verdict:
    """A result's status and problems, most severe first."""

    status: Status
    problems: tuple[Problem, ...]
    chain_verified: bool
    """True when the presented chain leads to a trust anchor."""
    days_left: int | None
    """Whole days until the leaf expires (negative once expired); None when unknown."""

    @property
    def why(self) -> str:
        """The most severe problem's message; ``N days left`` for OK."""
        if self.status is Status.OK or not self.problems:
            if self.days_left is None:
                return "OK"
            return f"{self.days_left} day{'' if self.days_left == 1 else 's'} left"
        return self.problems[0].message

    def kinds(self) -> set[Kind]:
        """The kinds of problem this target has."""
        return {p.kind for p in self.problems}


@dataclass(frozen=True)
class Judged:
    """A result with its verdict."""

    result: ProbeResult
    verdict: Verdict


@dataclass(frozen=True)
class Policy:
    """What judging is asked: the expiry thresholds, and ``--verify``."""

    warn_days: int
    crit_days: int
    verify: bool = False


def status_of(problems: Iterable[Problem]) -> Status:
    """The worst severity among ``problems`` as a status (notes count for nothing)."""
    severities = {p.severity for p in problems}
    if Severity.CRITICAL in severities:
        return Status.CRITICAL
    if Severity.WARNING in severities:
        return Status.WARNING
    return Status.OK


def _date(value: datetime) -> str:
    return value.strftime("%Y-%m-%d")


def _plural(days: int) -> str:
    return f"{days} day{'' if days == 1 else 's'}"


def validity_problems(
    not_before: datetime, not_after: datetime, at: datetime, policy: Policy
) -> list[Problem]:
    """Expired, not yet valid, or expiring within crit-days / warn-days, at probe time."""
    if at > not_after:
        ago = int((at - not_after).total_seconds() // _DAY)
        when = "less than a day ago" if ago == 0 else f"{_plural(ago)} ago"
        return [Problem(Kind.EXPIRED, Severity.CRITICAL, f"expired {_date(not_after)}, {when}")]
    if at < not_before:
        return [
            Problem(
                Kind.NOT_YET_VALID, Severity.CRITICAL,
                f"not valid before {not_before.strftime('%Y-%m-%d %H:%M')} UTC",
            )
        ]  # fmt: skip
    left = (not_after - at).total_seconds()
    if left >= max(policy.crit_days, policy.warn_days) * _DAY:
        return []
    days = int(left // _DAY)
    soon = "within a day" if days == 0 else f"in {_plural(days)}"
    message = f"expires {soon}, {_date(not_after)}"
    if left < policy.crit_days * _DAY:
        return [Problem(Kind.EXPIRES_SOON, Severity.CRITICAL, message)]
    return [Problem(Kind.EXPIRES_SOON, Severity.WARNING, message)]


class Judge:
    """Judges results one by one against one policy and one set of anchors (read on first
    need, once). Never raises on what a server presented."""

    def __init__(self, policy: Policy, anchors: Callable[[], Anchors]) -> None:
        self.policy = policy
        self._anchors = anchors
        self._context: chain_check.TrustContext | None = None
        # Certificates repeat across targets (intermediates always, a leaf served on many
        # endpoints often): each is parsed and checked for weak crypto once, and each chain's
        # path verified once while every certificate in it stays valid.
        self._parsed: dict[bytes, _Parsed] = {}
        self._trusted: dict[tuple[bytes, ...], tuple[datetime, datetime, chain_check.Trust]] = {}
        # Distinct leaves under one CA (one intermediate for a whole network): once a path
        # through the CA verified, a leaf presented with that CA is checked against the CA
        # alone, one signature instead of the path's; anything short of a pass is judged in
        # full. Not when a certificate above constrains names (verified_issuer).
        self._issuers: dict[bytes, chain_check.VerifiedIssuer] = {}
        self.full_checks = 0
        self._name_misses = 0
        """Leaves in a row the verifier did not pass with their name (see _named_under)."""
        self._name_tries = 0
        """Chains verified in full, path built to an anchor (for tests and benchmarks)."""

    @property
    def anchors(self) -> Anchors:
        """The anchors (read now if not yet)."""
        return self._trust_context().anchors

    def store_note(self) -> str | None:
        """The note that no OS trust store could be read, once the anchors were needed."""
        return self._context.anchors.note if self._context is not None else None

    def _trust_context(self) -> chain_check.TrustContext:
        if self._context is None:
            self._context = chain_check.TrustContext(self._anchors())
        return self._context

    def _parse(self, der: bytes) -> _Parsed:
        found = self._parsed.get(der)
        if found is None:
            found = _Parsed.of(der)
            if len(self._parsed) >= _CACHED:
                self._parsed.clear()  # bounded: distinct chains must not grow this without end
            self._parsed[der] = found
        return found

    def __call__(self, result: ProbeResult) -> Verdict:
        """The verdict on ``result``."""
        if not result.ok or not result.chain:
            why = str(result.error) if result.error else "no certificate was presented"
            problem = Problem(Kind.FAILED, Severity.CRITICAL, why)
            return Verdict(Status.CRITICAL, (problem,), chain_verified=False, days_left=None)
        problems: list[Problem] = []
        concern = Severity.WARNING if self.policy.verify else Severity.NOTE
        parsed = [self._parse(der) for der in result.chain]
        leaf = parsed[0].cert
        presented = [p.cert for p in parsed[1:] if p.cert is not None]
        days_left: int | None = None
        verified = False
        if leaf is None:
            problems.append(
                Problem(
                    Kind.EXPIRES_SOON,
                    Severity.WARNING,
                    "the leaf cannot be parsed: its expiry date is unknown",
                )
            )
            problems.append(Problem(Kind.UNTRUSTED, concern, "the leaf cannot be parsed"))
        else:
            at = result.probed_at
            try:
                not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
            except Exception:
                problems.append(
                    Problem(
                        Kind.EXPIRES_SOON,
                        Severity.WARNING,
                        "the leaf's validity dates cannot be read",
                    )
                )
            else:
                days_left = int((not_after - at).total_seconds() // _DAY)
                problems += validity_problems(not_before, not_after, at, self.policy)
                # Trust is judged at a moment the leaf is valid: an expired leaf is "expired",
                # not also "untrusted" for the same reason.
                at = min(max(at, not_before), not_after)
            reference = result.servername or result.target.host
            if self._named_under(result.chain, leaf, reference, at):
                verified = True  # and the name matches: one verification said both
            else:
                trust = self._trust(result.chain, leaf, presented, at)
                verified = trust.verified
                if not trust.verified:
                    problems.append(Problem(Kind.UNTRUSTED, concern, trust.why or "untrusted"))
                try:
                    mismatch = chain_check.name_problem(leaf, reference)
                except Exception as exc:  # never let one odd certificate stop the judging
                    mismatch = f"the name cannot be checked ({type(exc).__name__})"
                if mismatch:
                    problems.append(Problem(Kind.NAME_MISMATCH, concern, mismatch))
        problems += [Problem(kind, concern, text) for p in parsed for kind, text in p.weak]
        problems.sort(key=lambda p: (_RANK[p.severity], _ORDER[p.kind]))
        return Verdict(status_of(problems), tuple(problems), verified, days_left)

    def _named_under(
        self, chain: tuple[bytes, ...], leaf: x509.Certificate, reference: str, at: datetime
    ) -> bool:
        """True when the leaf was presented with a CA already verified (``_issuers``) and one
        verification under that CA passes with the name as subject: trusted and named at once,
        the common case of a network's own CA. Where leaves keep failing it (targets probed by
        an address their certificates do not name), it is tried only now and then."""
        issuer = self._issuers.get(chain[1]) if len(chain) > 1 else None
        if issuer is None:
            return False
        self._name_tries += 1
        if self._name_misses >= _MISSES and self._name_tries % _MISSES:
            return False
        try:
            named = chain_check.verified_under(
                leaf, issuer, self._trust_context(), at, name=reference
            )
        except Exception:  # judged in full instead
            named = False
        self._name_misses = 0 if named else self._name_misses + 1
        return named

    def _trust(
        self,
        chain: tuple[bytes, ...],
        leaf: x509.Certificate,
        presented: Sequence[x509.Certificate],
        at: datetime,
    ) -> chain_check.Trust:
        cached = self._trusted.get(chain)
        if cached is not None and cached[0] <= at <= cached[1]:
            return cached[2]
        context = self._trust_context()
        issuer = self._issuers.get(chain[1]) if len(chain) > 1 else None
        try:
            if issuer is not None and chain_check.verified_under(leaf, issuer, context, at):
                return chain_check.Trust(verified=True)
            self.full_checks += 1
            trust = chain_check.check_trust(leaf, presented, context, at)
            if trust.verified and len(chain) > 1 and trust.path[1:2] == tuple(presented[:1]):
                found = chain_check.verified_issuer(trust.path)
                if found is not None:
                    if len(self._issuers) >= _CACHED:
                        self._issuers.clear()
                    self._issuers[chain[1]] = found
        except Exception as exc:  # a certificate the verifier chokes on: judged, not a crash
            why = f"the chain cannot be verified ({type(exc).__name__}: {exc})"
            return chain_check.Trust(False, why)
        window = _valid_together([leaf, *presented])
        if window is not None:
            if len(self._trusted) >= _CACHED:
                self._trusted.clear()
            self._trusted[chain] = (*window, trust)
        return trust


_CACHED = 4096
"""Certificates and chains remembered at most, each; then forgotten all at once."""
_MISSES = 16
"""After this many leaves in a row failed the one-step check of ``_named_under``, it is
tried on one leaf in this many."""


def _valid_together(certs: Sequence[x509.Certificate]) -> tuple[datetime, datetime] | None:
    """When every certificate of ``certs`` is valid: within it a path's verification gives
    the same answer (the anchors' own validity aside, which changes on a scale of years)."""
    try:
        start = max(c.not_valid_before_utc for c in certs)
        end = min(c.not_valid_after_utc for c in certs)
    except Exception:
        return None
    return (start, end) if start <= end else None


@dataclass(frozen=True)
class _Parsed:
    """One presented certificate, parsed (None when it cannot be), and its weak crypto."""

    cert: x509.Certificate | None
    weak: tuple[tuple[Kind, str], ...]

    @classmethod
    def of(cls, der: bytes) -> _Parsed:
        try:
            cert = x509.load_der_x509_certificate(der)
        except Exception:
            return cls(None, ())
        found: list[tuple[Kind, str]] = []
        for kind, check in (
            (Kind.WEAK_KEY, chain_check.weak_key),
            (Kind.WEAK_SIGNATURE, chain_check.weak_signature),
        ):
            try:
                message = check(cert)
            except Exception:  # an odd certificate is not judged weak, and stops nothing
                message = None
            if message:
                found.append((kind, message))
        return cls(cert, tuple(found))


@dataclass(frozen=True)
class Tally:
    """What the summary line counts: targets by status and by kind of problem."""

    total: int
    statuses: Counter[Status]
    kinds: Counter[Kind]
    not_probed: int = 0
    """Targets left unfinished by Ctrl-C."""

    @classmethod
    def of(cls, verdicts: Iterable[Verdict], *, total: int | None = None) -> Tally:
        """Count ``verdicts``; ``total`` (the targets given) beyond them were not probed."""
        statuses: Counter[Status] = Counter()
        kinds: Counter[Kind] = Counter()
        for verdict in verdicts:
            statuses[verdict.status] += 1
            kinds.update(verdict.kinds())
        done = sum(statuses.values())
        given = done if total is None else total
        return cls(given, statuses, kinds, not_probed=max(0, given - done))

    def line(self) -> str:
        """``summary: N targets, A OK, B WARNING, C CRITICAL`` and the counts by kind."""
        counts = ", ".join(f"{self.statuses[s]} {s.value}" for s in Status)
        text = f"summary: {self.total} target{'' if self.total == 1 else 's'}, {counts}"
        if self.not_probed:
            text += f", {self.not_probed} not probed (interrupted)"
        why = ", ".join(f"{self.kinds[k]} {WORDS[k]}" for k in Kind if self.kinds[k])
        return f"{text}; {why}" if why else text
