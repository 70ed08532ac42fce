"""The ``discover`` scan: every address x port of a Plan, paced and bounded, each one probe;
what presented a certificate, rendered as a targets file or as the probe JSON.

Each pair is one ``probe.probe``: its connect is the scan's TCP connect, so an open port
costs one connection, not a connect to find it and a second to probe it. Where nothing
listens the probe ends at its connect stage, with no address reached, which is what
"closed" means here.

The pairs are generated as the probes take them, and of an endpoint found only the entry
it prints is kept (its targets-file line or its JSON object), never its chain: memory
grows with what is found, not with the networks scanned.
"""

from __future__ import annotations

import ipaddress
import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from trackssl_agent.discover.plan import Address, Plan, address_key
from trackssl_agent.engine import probe, probe_pool, protocols
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import Target
from trackssl_agent.log import printable
from trackssl_agent.render import output

DEFAULT_RATE = 500
"""New connection attempts per second unless ``--rate`` says otherwise."""

MAX_SUBJECT = 200
"""Characters of a leaf's subject shown in a targets-file comment, at most: a subject of
any length keeps the line far below the targets file's 4,096-byte line limit."""

Progress = Callable[[int, int], None]
"""``(pairs done, pairs in all)``, called after each pair."""

Render = Callable[[ProbeResult], str]
"""What an endpoint found is kept as: its targets-file line or its JSON object."""


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
    found: tuple[str, ...]
    """The entries (``Render``'s) of the endpoints that presented a certificate, sorted by
    address, then port."""
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
    """The pairs as Targets, each made when a probe takes it and handed out no sooner than
    the limiter allows.

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
    render: Render | None = None,
    dialogues: Mapping[int, Protocol] = protocols.PORTS,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Discovery:
    """Probe every pair of ``plan`` (TRACKSSL_ALLOW already applied by it), at most
    ``concurrency`` at once and ``rate`` new connections a second; ``dialogues`` is the
    port table that picks a STARTTLS dialogue (direct TLS on every other port). Each
    endpoint found is kept as ``render`` makes it (``targets_line`` by default)."""
    started = time.monotonic()
    limiter = RateLimiter(rate, burst=burst_for(rate))
    keep = render or targets_line
    workers = max(1, min(concurrency, plan.pairs))
    tried = opened = 0
    found: list[tuple[tuple[int, int, int], str]] = []
    pairs = _pairs(plan, dialogues, limiter)
    # As many results waiting as probes running: each may hold a chain of up to 1 MiB,
    # and the reader, which keeps a line of each, is quick.
    results = probe_pool.probe_many(
        pairs, settings, concurrency=workers, stop=stop, waiting=workers
    )
    for _index, result in results:
        tried += 1
        opened += result.address is not None
        if result.ok and result.chain:
            found.append((_result_key(result), keep(result)))
        if progress is not None:
            progress(tried, plan.pairs)
    found.sort(key=lambda entry: entry[0])
    return Discovery(
        plan=plan,
        tried=tried,
        open=opened,
        found=tuple(text for _key, text in found),
        elapsed=time.monotonic() - started,
    )


def _result_key(result: ProbeResult) -> tuple[int, int, int]:
    version, number = address_key(ipaddress.ip_address(result.target.host))
    return version, number, result.target.port


def targets_line(result: ProbeResult) -> str:
    """The targets-file line of an endpoint, for ``check-once --targets``: its TARGET and
    ``# subject, expires YYYY-MM-DD`` (``expired`` for a date before the probe; the subject
    made printable, so that a newline in it cannot start a line of its own, and cut to
    ``MAX_SUBJECT`` characters)."""
    leaf = output.leaf_summary(result)
    subject = printable(leaf.subject) if leaf is not None and leaf.subject else "(no subject)"
    if len(subject) > MAX_SUBJECT:
        subject = subject[: MAX_SUBJECT - 3] + "..."
    not_after = leaf.not_after if leaf is not None else None
    expires = not_after.strftime("%Y-%m-%d") if not_after is not None else "unknown"
    # The words of the verdict (SPEC 4a): a date before the probe is "expired".
    verb = "expired" if not_after is not None and not_after < result.probed_at else "expires"
    return f"{result.target.text} # {subject}, {verb} {expires}\n"


def json_entry(now: datetime) -> Render:
    """The ``Render`` that keeps an endpoint as its object of the probe JSON (SPEC
    section 4), indented as an element of ``render_json``'s array."""

    def render(result: ProbeResult) -> str:
        return textwrap.indent(json.dumps(output.result_json(result, now), indent=2), "  ")

    return render


def render_targets(found: Sequence[str]) -> str:
    """A targets file of ``targets_line`` entries."""
    return "".join(found)


def render_json(found: Sequence[str]) -> str:
    """The probe JSON array of ``json_entry`` entries: what ``json.dumps`` of the list
    with ``indent=2`` would print."""
    if not found:
        return "[]\n"
    return "[\n" + ",\n".join(found) + "\n]\n"
