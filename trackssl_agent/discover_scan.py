"""The ``discover`` scan: every address x port of a Plan, paced and bounded, each one probe;
what presented a certificate, rendered as a targets file or as the probe JSON.

Each pair is one ``probe.probe``: its connect is the scan's TCP connect, so an open port
costs one connection, not a connect to find it and a second to probe it. Where nothing
listens the probe ends at its connect stage, with no address reached, which is what
"closed" means here.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from trackssl_agent import output, probe, probe_pool, protocols
from trackssl_agent.discover import Address, Plan, address_key
from trackssl_agent.log import printable
from trackssl_agent.protocols import Protocol
from trackssl_agent.results import ProbeResult
from trackssl_agent.targets import Target

DEFAULT_RATE = 500
"""New connection attempts per second unless ``--rate`` says otherwise."""

Progress = Callable[[int, int], None]
"""``(pairs done, pairs in all)``, called after each pair."""


class RateLimiter:
    """Paces events to ``rate`` a second, allowing a burst of ``burst`` (a generic cell
    rate algorithm): over any second at most ``rate + burst`` events pass.

    Slots are reserved under a lock, then slept for outside it, so threads may share one.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._due = clock()
        """When the next event is due on a steady schedule (the theoretical arrival time)."""
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Return when the next event may happen."""
        with self._lock:
            now = self._clock()
            due = max(self._due, now)
            delay = due - self._tolerance - now
            self._due = due + self._interval
        if delay > 0:
            self._sleep(delay)


def burst_for(rate: int) -> int:
    """The burst allowed at ``rate``: 20 ms worth, so that a high rate is not held back by
    sleeps shorter than the system can time, and a low one stays exact."""
    return max(1, rate // 50)


def scheme_for(protocol: Protocol, port: int) -> str:
    """The scheme that writes ``protocol`` on ``port`` (``submission`` for SMTP on 587)."""
    return next((s for s, p in protocol.schemes.items() if p == port), protocol.value)


def endpoint_target(
    address: Address, port: int, dialogues: Mapping[int, Protocol] = protocols.PORTS
) -> Target:
    """The Target of one pair, its text in ``check-once --targets`` syntax: the scheme where
    the port table chose a dialogue (``ldap://10.1.0.5:389``), IPv6 bracketed."""
    host = str(address)
    shown = f"[{host}]" if address.version == 6 else host
    protocol = dialogues.get(port)
    text = f"{shown}:{port}"
    if protocol is not None:
        text = f"{scheme_for(protocol, port)}://{text}"
    return Target(text=text, host=host, port=port, starttls=protocol, is_ip=True)


@dataclass(frozen=True)
class Discovery:
    """What one scan found, and what it counted on the way."""

    plan: Plan
    tried: int
    """Pairs probed (all of the plan's unless the scan was stopped)."""
    open: int
    """Pairs where the TCP connect succeeded."""
    found: tuple[ProbeResult, ...]
    """The endpoints that presented a certificate, sorted by address, then port."""
    elapsed: float
    """Seconds the scan took."""

    @property
    def completed(self) -> bool:
        """True when every pair of the plan was tried."""
        return self.tried == self.plan.pairs

    def summary(self) -> str:
        """The line for stderr: ``discover: 256 addresses x 20 ports, 5,120 tried, ...``."""
        plan = self.plan
        addresses = _count(plan.total_addresses, "address", "addresses")
        parts = [
            f"{addresses} x {_count(len(plan.ports), 'port', 'ports')}",
            f"{self.tried:,} tried",
            f"{self.open:,} open",
            f"{len(self.found):,} with a certificate",
        ]
        if plan.outside:
            parts.append(f"{plan.outside:,} outside TRACKSSL_ALLOW")
        parts.append(f"elapsed {self.elapsed:.1f} s")
        return "discover: " + ", ".join(parts)


def _count(number: int, one: str, many: str) -> str:
    return f"{number:,} {one if number == 1 else many}"


def _pairs(plan: Plan, dialogues: Mapping[int, Protocol], limiter: RateLimiter) -> Iterator[Target]:
    """The pairs as Targets, each handed out no sooner than the limiter allows.

    Port by port across the addresses, so that consecutive attempts go to different hosts
    rather than twenty at once to one. The probe workers draw from this one iterator under
    a lock, which is what makes the pacing hold across all of them.
    """
    for port in plan.ports:
        for address in plan.addresses:
            limiter.wait()
            yield endpoint_target(address, port, dialogues)


def scan(
    plan: Plan,
    settings: probe.ProbeSettings,
    *,
    concurrency: int,
    rate: int = DEFAULT_RATE,
    dialogues: Mapping[int, Protocol] = protocols.PORTS,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Discovery:
    """Probe every pair of ``plan`` (TRACKSSL_ALLOW already applied by it), at most
    ``concurrency`` at once and ``rate`` new connections a second; ``dialogues`` is the
    port table that picks a STARTTLS dialogue (direct TLS on every other port)."""
    started = time.monotonic()
    limiter = RateLimiter(rate, burst=burst_for(rate))
    workers = max(1, min(concurrency, plan.pairs))
    tried = opened = 0
    found: list[ProbeResult] = []
    pairs = _pairs(plan, dialogues, limiter)
    for _index, result in probe_pool.probe_many(pairs, settings, concurrency=workers, stop=stop):
        tried += 1
        opened += result.address is not None
        if result.ok and result.chain:
            found.append(result)
        if progress is not None:
            progress(tried, plan.pairs)
    found.sort(key=_result_key)
    return Discovery(
        plan=plan, tried=tried, open=opened, found=tuple(found), elapsed=time.monotonic() - started
    )


def _result_key(result: ProbeResult) -> tuple[int, int, int]:
    version, number = address_key(ipaddress.ip_address(result.target.host))
    return version, number, result.target.port


def render_targets(found: Sequence[ProbeResult]) -> str:
    """A targets file for ``check-once --targets``: one TARGET a line, each followed by
    ``# subject, expires YYYY-MM-DD`` (``expired`` for a date before the probe; certificate
    text made printable: a newline in a subject must not start a line of its own)."""
    lines = []
    for result in found:
        leaf = output.leaf_summary(result)
        subject = leaf.subject if leaf is not None and leaf.subject else "(no subject)"
        not_after = leaf.not_after if leaf is not None else None
        expires = not_after.strftime("%Y-%m-%d") if not_after is not None else "unknown"
        # The words of the verdict (SPEC 4a): a date before the probe is "expired".
        verb = "expired" if not_after is not None and not_after < result.probed_at else "expires"
        lines.append(f"{result.target.text} # {printable(subject)}, {verb} {expires}\n")
    return "".join(lines)


def render_json(found: Sequence[ProbeResult], now: datetime) -> str:
    """The probe JSON array (SPEC section 4) of the endpoints found."""
    return json.dumps([output.result_json(r, now) for r in found], indent=2) + "\n"
