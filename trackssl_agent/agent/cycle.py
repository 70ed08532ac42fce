"""One cycle: fetch the domain list, probe all concurrently, post each result as it
completes through the outbox, and report. ``compose`` wires it from a Config; local mode
(``local_mode``) uses the same producer of results.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from trackssl_agent import log
from trackssl_agent.agent import liveness
from trackssl_agent.agent.cycle_report import CycleReport
from trackssl_agent.agent.delivery import INITIAL, Delivery
from trackssl_agent.agent.memory import release_memory
from trackssl_agent.cloud import schema
from trackssl_agent.cloud.api import ApiClient, AuthError
from trackssl_agent.cloud.schema import Domain
from trackssl_agent.engine.probe import ProbeSettings
from trackssl_agent.engine.probe_pool import Probes, start_probes
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.render import report
from trackssl_agent.state.outbox import JsonBytes, Outbox, Record

logger = log.get_logger(__name__)

Progress = Callable[[int, int, int], None]
"""``progress(done, total, failed)`` after each probe."""

POSTERS = INITIAL
"""Concurrent posts at the start of a cycle; more while the API's latency calls for it."""
_BATCH = 256
_LINGER = 0.05
"""Seconds a batch gathers results: a post waits at most this long for its write."""


def _batches(probes: Probes) -> Iterator[list[tuple[int, ProbeResult]]]:
    """Block for one result, then gather more for up to ``_LINGER`` seconds (at most
    ``_BATCH``): one outbox write, and so one fsync, per batch rather than per result. The
    workers wake this thread for the first result and a full batch only."""
    while (batch := probes.take(_BATCH, _LINGER)) is not None:
        yield batch


@dataclass
class _Tally:
    """What the consumer counted of this cycle's results."""

    retrieved: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    kept: list[ProbeResult | None] = field(default_factory=list)


def run_cycle(
    *,
    client: ApiClient,
    outbox: Outbox | None,
    settings: ProbeSettings,
    concurrency: int,
    stop: threading.Event,
    progress: Progress | None = None,
    keep_results: bool = False,
    posters: int = POSTERS,
    clock: Callable[[], float] = time.monotonic,
) -> CycleReport:
    """One cycle; ``outbox=None`` is a dry run that posts nothing.

    Raises ApiError when the domain list cannot be fetched. Once ``stop`` is set no new
    probe or post starts; what is undelivered stays in the outbox. The domain list, the
    results and the payloads are unreachable once it returns, and the memory they took
    goes back to the system.
    """
    try:
        return _cycle(
            client=client, outbox=outbox, settings=settings, concurrency=concurrency,
            stop=stop, progress=progress, keep_results=keep_results, posters=posters,
            clock=clock,
        )  # fmt: skip
    finally:
        release_memory()


def _cycle(
    *,
    client: ApiClient,
    outbox: Outbox | None,
    settings: ProbeSettings,
    concurrency: int,
    stop: threading.Event,
    progress: Progress | None,
    keep_results: bool,
    posters: int,
    clock: Callable[[], float],
) -> CycleReport:
    started = clock()
    domains, skipped = client.fetch_domains()
    liveness.beat()
    for warning in skipped.lines():
        logger.warning("%s", warning)
    logger.info("the domain list names %d domains", len(domains))
    backlog = outbox.pending() if outbox is not None else []
    if backlog:
        logger.info("re-sending %d results left in the outbox by earlier cycles", len(backlog))
    backlog_count = len(backlog)
    delivery: Delivery | None = None
    if outbox is not None:
        delivery = Delivery(client=client, outbox=outbox, stop=stop, initial=posters)
        delivery.put(backlog, backlog=True)
    del backlog
    tally = _Tally(kept=[None] * len(domains) if keep_results else [])
    probes = start_probes([d.target for d in domains], settings, concurrency=concurrency, stop=stop)
    try:
        for batch in _batches(probes):
            _consume(batch, domains, outbox, delivery, tally)
            liveness.beat()
            if delivery is not None:
                delivery.wait_for_room()  # the probes wait too once their queue is full
            if progress:
                failed = sum(tally.failed.values())
                progress(tally.retrieved + failed, len(domains), failed)
    finally:
        probes.halt()
        if delivery is not None:
            delivery.finish()
        if outbox is not None:
            outbox.close()
    return _report(
        domains=len(domains), skipped=skipped.count, backlog=backlog_count, tally=tally,
        outbox=outbox, delivery=delivery, elapsed=clock() - started,
    )  # fmt: skip


def _consume(
    batch: list[tuple[int, ProbeResult]],
    domains: Sequence[Domain],
    outbox: Outbox | None,
    delivery: Delivery | None,
    tally: _Tally,
) -> None:
    """One batch of results: stored (one write), handed to the posters, counted."""
    if outbox is not None and delivery is not None:
        records = [
            Record(domains[i].domain_id, JsonBytes(schema.payload_body(domains[i], r)))
            for i, r in batch
        ]
        outbox.add(records)
        delivery.put(records)
        outbox.commit()
    for index, result in batch:
        if result.error is None:
            tally.retrieved += 1
        else:
            tally.failed[result.error.kind.value] += 1
            logger.warning(
                "%s (domain_id %d) failed: %s",
                result.target.text,
                domains[index].domain_id,
                result.error,
                extra={"fields": {"event": "target_failed", "kind": result.error.kind}},
            )
        if tally.kept:
            tally.kept[index] = result


def _report(
    *,
    domains: int,
    skipped: int,
    backlog: int,
    tally: _Tally,
    outbox: Outbox | None,
    delivery: Delivery | None,
    elapsed: float,
) -> CycleReport:
    unsaved = outbox.unsaved() if outbox is not None else 0
    queued = len(outbox) - unsaved if outbox is not None else 0
    state_problem = outbox.problem if outbox is not None else None
    problem = str(delivery.failure) if delivery is not None and delivery.failure else None
    # state_problem: durability was lost, whether or not all was delivered
    code = report.cycle_exit_code(
        auth_failed=delivery is not None and isinstance(delivery.failure, AuthError),
        waits=bool(queued or unsaved or state_problem or (delivery and delivery.rejected)),
    )
    return CycleReport(
        domains=domains,
        skipped=skipped,
        retrieved=tally.retrieved,
        failed=dict(tally.failed),
        delivered=delivery.delivered if delivery is not None else 0,
        queued=queued,
        rejected=delivery.rejected if delivery is not None else 0,
        backlog=backlog,
        elapsed_s=elapsed,
        exit_code=code,
        problem=problem,
        state_problem=state_problem,
        unsaved=unsaved,
        results=tuple(r for r in tally.kept if r is not None),
    )
