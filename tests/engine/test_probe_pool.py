"""The probe pool: as many workers as the probes need, results handed over in batches."""

from __future__ import annotations

import threading
import time

from tests import tls_servers
from tests.listeners import closed_port
from trackssl_agent.engine.probe import ProbeSettings
from trackssl_agent.engine.probe_pool import (
    Probes,
    busy_workers,
    probe_many,
)
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import parse_target


def _probe_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("probe-") and t.is_alive())


def test_targets_that_answer_at_once_need_no_more_than_the_busy_workers() -> None:
    """300 targets refused at once, with room for 64 workers: no more workers start than
    keep the cores busy, since no probe waits on its server."""
    port = closed_port()
    targets = [parse_target(f"127.0.0.1:{port}") for _ in range(300)]
    seen: list[int] = []
    done = threading.Event()

    def sample() -> None:  # from before the first worker starts until the last result
        while not done.is_set():
            seen.append(_probe_threads())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _index, result in probe_many(targets, ProbeSettings(timeout=5), concurrency=64):
            assert result.error is not None
            seen.append(_probe_threads())
    finally:
        done.set()
        sampler.join()
    assert 1 <= max(seen) <= busy_workers()


def test_probes_waiting_on_silent_servers_get_workers_of_their_own() -> None:
    """Silent servers hold their probes until the deadline: a worker is added for each,
    up to the concurrency, so 40 silent targets end together, not in rounds."""
    with tls_servers.running(tls_servers.silent_server()) as server:
        targets = [parse_target(server.endpoint) for _ in range(40)]
        started = time.monotonic()
        results = list(probe_many(targets, ProbeSettings(timeout=1.0), concurrency=40))
        elapsed = time.monotonic() - started
    assert len(results) == 40
    assert elapsed < 1.0 * 2.5  # in rounds of busy_workers() it would take 40 / 6 s


def test_take_hands_over_a_batch_after_the_linger_and_none_at_the_end() -> None:
    """``take`` waits for one result, then up to ``linger`` for more (at most ``most``),
    hands over what is ready, and None once the final None is reached."""
    probes = Probes(threading.Event(), waiting=100)
    result = ProbeResult.__new__(ProbeResult)  # the queue never looks inside a result

    def produce() -> None:
        for index in range(5):
            probes.put((index, result))
        time.sleep(0.3)
        for index in range(5, 8):
            probes.put((index, result))
        probes.put(None)

    threading.Thread(target=produce, daemon=True).start()
    first = probes.take(3, linger=5.0)
    second = probes.take(10, linger=0.05)
    third = probes.take(10, linger=5.0)
    assert first is not None and [i for i, _ in first] == [0, 1, 2]  # full at 3
    assert second is not None and [i for i, _ in second] == [3, 4]  # the linger ended it
    assert third is not None and [i for i, _ in third] == [5, 6, 7]  # the end ended it
    assert probes.take(10, linger=5.0) is None
    assert probes.get() is None
