"""Posting concurrency and order: the Concurrency bookkeeping with an injected clock, and
the Delivery against the real loopback API."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tests.api_server import HANG, OK, ApiServer, Reply
from trackssl_agent.agent.delivery import CAP, Concurrency, Delivery
from trackssl_agent.cloud.api import ApiClient, ApiSettings
from trackssl_agent.config.secret import Secret
from trackssl_agent.state.outbox import JsonBytes, Outbox, Record


class Clock:
    """A clock moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def interval(limit: Concurrency, clock: Clock, posts: int, *, waited: bool) -> None:
    """``posts`` completions over one 0.3 s interval."""
    for _ in range(posts):
        if waited:
            limit.waited()
        clock.now += 0.3 / posts
        limit.completed()


def test_concurrency_doubles_while_throughput_rises_up_to_the_cap() -> None:
    """Records waiting and more delivered each interval: 4, 8, 16, 32, never above the cap."""
    clock = Clock()
    limit = Concurrency(4, clock=clock)
    seen = [limit.limit]
    for _ in range(6):
        interval(limit, clock, limit.limit * 2, waited=True)  # throughput follows the limit
        seen.append(limit.limit)
    assert seen == [4, 8, 16, 32, CAP, CAP, CAP]


def test_concurrency_holds_when_nothing_waits_or_throughput_is_flat() -> None:
    """No growth without waiting records, nor when more posts stopped delivering more."""
    clock = Clock()
    limit = Concurrency(4, clock=clock)
    interval(limit, clock, 10, waited=False)
    assert limit.limit == 4
    interval(limit, clock, 10, waited=True)
    assert limit.limit == 4  # the same rate as before: the API, not the posters, is the limit


def test_overload_halves_and_pauses_for_the_delay() -> None:
    """A 429/503 halves the limit and holds growth until its Retry-After has passed."""
    clock = Clock()
    limit = Concurrency(16, clock=clock)
    limit.overloaded(5.0)
    assert (limit.limit, limit.paused_until) == (8, 5.0)
    interval(limit, clock, 20, waited=True)
    assert limit.limit == 8  # still paused
    clock.now = 6.0
    interval(limit, clock, 20, waited=True)
    assert limit.limit > 8
    for _ in range(10):
        limit.overloaded(0)
    assert limit.limit == 1


def record(domain_id: int, tag: str) -> Record:
    """A record whose body carries ``tag``."""
    body = json.dumps({"domain": {"domain_id": domain_id, "tag": tag}}).encode()
    return Record(domain_id, JsonBytes(body))


def test_backlog_first_newest_wins_and_a_429_is_retried(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """The backlog is posted before new records, a replaced record is skipped, and a post
    answered 429 is sent again; everything ends delivered."""
    api_server.script("certificate", Reply.error(429, **{"Retry-After": "0"}), OK)
    box = Outbox.open(tmp_path)
    backlog = [record(n, "old") for n in range(1, 6)]
    box.add(backlog)
    newer = record(3, "new")
    fresh = [record(n, "new") for n in range(10, 20)]
    settings = ApiSettings(
        url=api_server.url,
        auth_token=Secret(api_server.auth_token),
        agent_token=api_server.agent_token,
    )
    with ApiClient(settings, sleep=lambda _s: None, proxies={}) as client:
        delivery = Delivery(client=client, outbox=box, stop=threading.Event(), initial=8)
        box.add([newer])  # domain 3's backlog record is replaced before it is taken
        delivery.put(backlog, backlog=True)
        box.add(fresh)
        delivery.put([newer, *fresh])
        delivery.finish()
    posted = [(p["domain_id"], p["tag"]) for p in api_server.posted]
    assert sorted(posted[:4]) == [(1, "old"), (2, "old"), (4, "old"), (5, "old")]
    assert sorted(posted[4:]) == sorted([(3, "new")] + [(n, "new") for n in range(10, 20)])
    assert (delivery.delivered, delivery.failure, len(box)) == (15, None, 0)
    assert len(api_server.posts()) == 16  # the post answered 429 was sent again
    box.close()


def test_the_cycle_waits_for_room_while_posts_lag_and_not_once_stopped(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """``wait_for_room`` holds the cycle while more new records wait for a poster than it
    allows (posts hang here), and lets it go at once when the cycle is stopped."""
    api_server.fail("certificate", HANG)
    box = Outbox.open(tmp_path)
    records = [record(n, "new") for n in range(1, 11)]
    box.add(records)
    stop = threading.Event()
    settings = ApiSettings(
        url=api_server.url,
        auth_token=Secret(api_server.auth_token),
        agent_token=api_server.agent_token,
    )
    with ApiClient(settings, sleep=lambda _s: None, proxies={}) as client:
        delivery = Delivery(client=client, outbox=box, stop=stop, initial=1, cap=1)
        delivery.put(records)
        waiter = threading.Thread(target=delivery.wait_for_room, kwargs={"most": 3})
        waiter.start()
        waiter.join(0.6)
        assert waiter.is_alive()  # 9 records wait for the one hung poster
        stop.set()
        waiter.join(2)
        assert not waiter.is_alive()
        api_server.clear()  # later requests are answered...
        api_server.release()  # ...and the hung one too
        delivery.finish()
    assert len(box) == 10 - delivery.delivered  # nothing lost: the rest waits in the outbox
    box.close()


def test_posts_held_by_the_cores_do_not_grow_the_posters() -> None:
    """Records waiting and throughput rising, yet each post hardly waits on the API (a fast
    API on busy cores): the posters stay as they are, where more would only add threads."""
    clock = Clock()
    limit = Concurrency(4, clock=clock)
    for turn in range(4):
        posts = limit.limit * 2 * (turn + 1)  # more delivered every interval
        for _post in range(posts):
            limit.waited()
            clock.now += 0.3 / posts
            limit.completed(network=0.0001)
    assert limit.limit == 4


def test_posts_waiting_on_the_api_grow_the_posters() -> None:
    """Each post spends its time waiting on the API (a slow API): more posters deliver more,
    so the limit doubles as throughput rises."""
    clock = Clock()
    limit = Concurrency(4, clock=clock)
    seen = [limit.limit]
    for _ in range(3):
        posts = limit.limit * 2
        for _post in range(posts):
            limit.waited()
            clock.now += 0.3 / posts
            limit.completed(network=limit.limit * 0.3 / posts)  # every poster waits on the API
        seen.append(limit.limit)
    assert seen == [4, 8, 16, 32]
