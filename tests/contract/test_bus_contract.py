"""The contract every bus backend passes (gateway/core/bus.py), run against each backend.

Backends: the in-memory bus, and the SQLite bus on a fresh file in tmp_path (synchronous:
normal, to keep the suite fast; durability itself is tested in tests/unit/test_bus_sqlite.py).
Message data is a mix of plain values and `Reading`s: the SQLite bus stores and decodes them,
so a test also fails if a backend hands back something other than what was published.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.bus.memory import MemoryBus
from gateway.bus.sqlite import SQLiteBus, SQLiteBusConfig
from gateway.core.bus import BatchPolicy, Bus, BusClosed, OutgoingMessage, ReceivedMessage, SubscriptionConfig
from gateway.core.message import DeadLetter, Reading
from gateway.core.metrics import Metrics

MS = timedelta(milliseconds=1)
MakeBus = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["memory", "sqlite"])
async def make_bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeBus]:
    """`await make_bus(topic, *subscriptions, metrics=None)`: a bus with the topic and subscriptions declared."""
    made: list[Any] = []

    async def make(
        topic: str, *subs: SubscriptionConfig, metrics: Metrics | None = None, sqlite: dict[str, Any] | None = None
    ) -> Any:
        bus: Any
        if request.param == "memory":
            bus = MemoryBus(metrics)
        else:
            cfg = SQLiteBusConfig(synchronous="normal", **(sqlite or {}))
            bus = SQLiteBus(cfg, tmp_path / f"bus{len(made)}", metrics)
            await bus.open()
        made.append(bus)
        bus.create_topic(topic)
        for sub in subs:
            bus.create_subscription(sub)
        return bus

    yield make
    for bus in made:
        await bus.close()


# the SQLite bus's disk bound for two of the small messages of the flow-control test
TINY_DISK = {"max_bytes": 2 * 14}


def config(name: str, topic: str, **kw: Any) -> SubscriptionConfig:
    """A subscription that returns batches at once unless a test says otherwise."""
    batch = kw.pop("batch", policy())
    return SubscriptionConfig(name=name, topic=topic, batch=batch, **kw)


def policy(max_messages: int = 1000, max_bytes: int = 1 << 20, latency: float = 0.0) -> BatchPolicy:
    return BatchPolicy(max_messages=max_messages, max_bytes=max_bytes, max_latency=timedelta(seconds=latency))


def msgs(*data: Any, size: int = 10, key: str | None = None) -> list[OutgoingMessage]:
    return [OutgoingMessage(d, size, key) for d in data]


def reading(n: int) -> Reading:
    return Reading(
        "temp", f"dev{n}", {"device_id": f"dev{n}"}, {"value": float(n), "ok": True}, time_ns=n, received_ns=1
    )


async def pull(bus: Bus, sub: str, within: float = 1.0) -> list[ReceivedMessage]:
    return await asyncio.wait_for(bus.pull(sub), within)


async def assert_nothing(bus: Bus, sub: str, wait: float = 0.05) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bus.pull(sub), wait)


async def test_fan_out_gives_each_subscription_its_own_copy(make_bus: MakeBus) -> None:
    bus = await make_bus("fo", config("fo-a", "fo"), config("fo-b", "fo"))
    assert await bus.publish("fo", msgs(reading(1), "two", {"three": [3]})) == 2
    a = await pull(bus, "fo-a")
    b = await pull(bus, "fo-b")
    assert [m.data for m in a] == [reading(1), "two", {"three": [3]}]
    assert [m.data for m in b] == [m.data for m in a]
    bus.ack("fo-a", [m.ack_id for m in a])
    assert bus.stats("fo-a").backlog == 0
    assert bus.stats("fo-b").backlog == 3


async def test_publish_to_a_topic_without_subscriptions_reaches_none(make_bus: MakeBus) -> None:
    bus = await make_bus("none")
    assert await bus.publish("none", msgs(1)) == 0
    with pytest.raises(KeyError):
        await bus.publish("missing", msgs(1))


async def test_consumers_of_one_subscription_share_without_duplicates(make_bus: MakeBus) -> None:
    bus = await make_bus("wq", config("wq-s", "wq", batch=policy(max_messages=7)))
    await bus.publish("wq", msgs(*range(100)))
    seen: dict[str, list[int]] = {"a": [], "b": []}

    async def consume(who: str) -> None:
        while len(seen["a"]) + len(seen["b"]) < 100:
            try:
                batch = await asyncio.wait_for(bus.pull("wq-s"), 0.2)
            except TimeoutError:
                continue
            seen[who].extend(m.data for m in batch)
            bus.ack("wq-s", [m.ack_id for m in batch])
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(consume("a"), consume("b")), 5)
    assert seen["a"] and seen["b"]
    assert sorted(seen["a"] + seen["b"]) == list(range(100))


async def test_ack_removes_for_good(make_bus: MakeBus) -> None:
    bus = await make_bus("ack", config("ack-s", "ack", ack_deadline=50 * MS, min_backoff=MS, max_backoff=MS))
    await bus.publish("ack", msgs("x", "y"))
    first, _ = await pull(bus, "ack-s")
    bus.ack("ack-s", [first.ack_id])
    bus.ack("ack-s", [first.ack_id, 12345])  # already acked and unknown ids are ignored
    await asyncio.sleep(0.08)  # past the deadline: only the unacked one comes back
    [again] = await pull(bus, "ack-s")
    assert again.data == "y" and again.attempt == 2
    bus.ack("ack-s", [again.ack_id])
    await assert_nothing(bus, "ack-s", wait=0.08)
    st = bus.stats("ack-s")
    assert (st.backlog, st.backlog_bytes, st.outstanding_leases, st.acked, st.expired) == (0, 0, 0, 2, 1)


async def test_nack_redelivers_after_jittered_backoff(make_bus: MakeBus) -> None:
    bus = await make_bus("nk", config("nk-s", "nk", min_backoff=80 * MS, max_backoff=80 * MS))
    await bus.publish("nk", msgs(reading(5)))
    [m] = await pull(bus, "nk-s")
    bus.nack("nk-s", [m.ack_id])
    t0 = time.monotonic()
    [again] = await pull(bus, "nk-s")
    waited = time.monotonic() - t0
    assert again.data == reading(5) and again.attempt == 2 and again.ack_id != m.ack_id
    assert 0.039 <= waited < 0.5  # between half the ceiling (40 ms) and the ceiling, plus slack
    bus.ack("nk-s", [m.ack_id])  # the nacked delivery's id is dead
    assert bus.stats("nk-s").outstanding_leases == 1
    assert bus.stats("nk-s").nacked == 1


async def test_nack_with_explicit_delay_overrides_backoff(make_bus: MakeBus) -> None:
    slow = timedelta(seconds=10)
    bus = await make_bus("nd", config("nd-s", "nd", min_backoff=slow, max_backoff=slow))
    await bus.publish("nd", msgs("x"))
    [m] = await pull(bus, "nd-s")
    bus.nack("nd-s", [m.ack_id], delay=timedelta(0))
    [again] = await pull(bus, "nd-s", within=0.5)
    assert (again.data, again.attempt) == ("x", 2)


async def test_expired_lease_is_redelivered_and_old_ack_id_is_dead(make_bus: MakeBus) -> None:
    bus = await make_bus("ex", config("ex-s", "ex", ack_deadline=40 * MS, min_backoff=MS, max_backoff=MS))
    await bus.publish("ex", msgs("x"))
    t0 = time.monotonic()
    [m] = await pull(bus, "ex-s")
    [again] = await pull(bus, "ex-s")
    assert time.monotonic() - t0 >= 0.04
    assert again.data == "x" and again.attempt == 2
    bus.ack("ex-s", [m.ack_id])
    st = bus.stats("ex-s")
    assert (st.expired, st.backlog, st.outstanding_leases, st.acked) == (1, 1, 1, 0)


async def test_extend_prevents_expiry(make_bus: MakeBus) -> None:
    bus = await make_bus("xt", config("xt-s", "xt", ack_deadline=200 * MS, min_backoff=MS, max_backoff=MS))
    await bus.publish("xt", msgs("x"))
    [m] = await pull(bus, "xt-s")
    await asyncio.sleep(0.12)
    bus.extend("xt-s", [m.ack_id])
    await asyncio.sleep(0.13)  # 250 ms after the lease: expired, had it not been extended
    await assert_nothing(bus, "xt-s", wait=0.02)
    assert (bus.stats("xt-s").expired, bus.stats("xt-s").outstanding_leases) == (0, 1)
    bus.ack("xt-s", [m.ack_id])
    assert bus.stats("xt-s").backlog == 0


async def test_exhausted_message_is_dead_lettered_with_reason(make_bus: MakeBus) -> None:
    src = config("dl-s", "dl-src", max_delivery_attempts=3, dead_letter_topic="dl-dead")
    bus = await make_bus("dl-src", src)
    bus.create_topic("dl-dead")
    bus.create_subscription(config("dl-dlq", "dl-dead"))
    await bus.publish("dl-src", msgs(reading(7)))
    attempts = []
    for _ in range(3):
        [m] = await pull(bus, "dl-s")
        attempts.append(m.attempt)
        bus.nack("dl-s", [m.ack_id], delay=timedelta(0))
    assert attempts == [1, 2, 3]
    await assert_nothing(bus, "dl-s", wait=0.02)
    [dead] = await pull(bus, "dl-dlq")
    letter = dead.data
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "exhausted 3 delivery attempts; last: nack"
    assert letter.source == "subscription:dl-s" and letter.attempts == 3
    assert letter.topic == "reading/temp/dev7" and b'"value":7.0' in letter.payload
    st = bus.stats("dl-s")
    assert (st.dead_lettered, st.backlog, st.delivered, st.nacked) == (1, 0, 3, 3)


async def test_expiry_on_last_attempt_dead_letters(make_bus: MakeBus) -> None:
    src = config("de-s", "de-src", max_delivery_attempts=1, ack_deadline=30 * MS, dead_letter_topic="de-dead")
    bus = await make_bus("de-src", src)
    bus.create_topic("de-dead")
    bus.create_subscription(config("de-dlq", "de-dead"))
    await bus.publish("de-src", msgs("x"))
    await pull(bus, "de-s")
    await asyncio.sleep(0.05)
    assert bus.stats("de-s").expired == 1
    [dead] = await pull(bus, "de-dlq")
    assert dead.data.reason == "exhausted 1 delivery attempts; last: ack deadline expired"


async def test_ordering_keeps_key_order_across_a_nack(make_bus: MakeBus) -> None:
    bus = await make_bus("or", config("or-s", "or", ordering=True, batch=policy(max_messages=1)))
    await bus.publish("or", msgs("a1", "a2", key="a") + msgs("b1", key="b"))
    [a1] = await pull(bus, "or-s")
    [b1] = await pull(bus, "or-s")  # key a is busy: a2 must wait, b goes ahead
    assert (a1.data, b1.data) == ("a1", "b1")
    await assert_nothing(bus, "or-s", wait=0.02)
    bus.nack("or-s", [a1.ack_id], delay=timedelta(0))
    [again] = await pull(bus, "or-s")
    assert (again.data, again.attempt, again.ordering_key) == ("a1", 2, "a")
    await assert_nothing(bus, "or-s", wait=0.02)
    bus.ack("or-s", [again.ack_id])
    [a2] = await pull(bus, "or-s")
    assert a2.data == "a2"


async def test_ordering_batch_returns_in_publish_order_after_nacks(make_bus: MakeBus) -> None:
    bus = await make_bus("ob", config("ob-s", "ob", ordering=True, min_backoff=MS, max_backoff=MS))
    await bus.publish("ob", msgs("k1", "k2", "k3", key="k"))
    batch = await pull(bus, "ob-s")
    assert [m.data for m in batch] == ["k1", "k2", "k3"]
    await bus.publish("ob", msgs("k4", key="k"))
    bus.nack("ob-s", [batch[2].ack_id])  # newest first: order must still be restored
    await assert_nothing(bus, "ob-s", wait=0.02)  # k1 and k2 are still leased: key k is busy
    bus.nack("ob-s", [batch[1].ack_id, batch[0].ack_id])
    again = await pull(bus, "ob-s")
    assert [m.data for m in again] == ["k1", "k2", "k3", "k4"]


async def test_publish_blocks_while_full_and_resumes_after_ack(make_bus: MakeBus) -> None:
    """Flow control. On the SQLite bus `max_outstanding_*` bound only the in-memory window (a
    full one spills to disk: tests/unit/test_bus_paging.py); there the disk bound blocks."""
    metrics = Metrics()
    bus = await make_bus("fc", config("fc-s", "fc", max_outstanding_messages=2), metrics=metrics, sqlite=TINY_DISK)
    await asyncio.wait_for(bus.publish("fc", msgs(1, 2)), 0.5)
    blocked = asyncio.create_task(bus.publish("fc", msgs(3)))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(blocked), 0.05)
    batch = await pull(bus, "fc-s")
    assert [m.data for m in batch] == [1, 2]
    assert not blocked.done()  # leased messages still count
    bus.ack("fc-s", [batch[0].ack_id])
    assert await asyncio.wait_for(blocked, 0.5) == 1
    assert [m.data for m in await pull(bus, "fc-s")] == [3]
    waited = metrics.registry.get_sample_value("gateway_publish_blocked_seconds_total", {"topic": "fc"})
    assert waited is not None and waited >= 0.04


async def test_publish_blocks_on_bytes_and_hands_over_the_prefix_that_fits(make_bus: MakeBus) -> None:
    if isinstance(await make_bus("fb-probe"), SQLiteBus):
        pytest.skip("the SQLite bus's window does not block publishers: tests/unit/test_bus_paging.py")
    bus = await make_bus("fb", config("fb-s", "fb", max_outstanding_bytes=250))
    task = asyncio.create_task(bus.publish("fb", msgs(1, 2, 3, 4, size=100)))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 0.05)
    assert bus.stats("fb-s").backlog_bytes == 300  # taken while below the limit: 0, 100, 200
    batch = await pull(bus, "fb-s")
    bus.ack("fb-s", [m.ack_id for m in batch])
    await asyncio.wait_for(task, 0.5)
    assert [m.data for m in await pull(bus, "fb-s")] == [4]


async def test_batch_limited_by_max_messages(make_bus: MakeBus) -> None:
    bus = await make_bus("bm", config("bm-s", "bm", batch=policy(max_messages=10, latency=5)))
    await bus.publish("bm", msgs(*range(25)))
    first = await pull(bus, "bm-s", within=0.5)  # full batches do not wait for max_latency
    second = await pull(bus, "bm-s", within=0.5)
    assert [m.data for m in first] == list(range(10))
    assert [m.data for m in second] == list(range(10, 20))


async def test_batch_limited_by_max_bytes_but_never_empty(make_bus: MakeBus) -> None:
    bus = await make_bus("bb", config("bb-s", "bb", batch=policy(max_bytes=250, latency=5)))
    await bus.publish("bb", msgs("big", size=1000) + msgs(1, 2, 3, size=100))
    assert [m.data for m in await pull(bus, "bb-s", within=0.5)] == ["big"]
    assert [m.data for m in await pull(bus, "bb-s", within=0.5)] == [1, 2]


async def test_batch_waits_max_latency_to_fill(make_bus: MakeBus) -> None:
    bus = await make_bus("bl", config("bl-s", "bl", batch=policy(max_messages=100, latency=0.15)))
    await bus.publish("bl", msgs(1))
    t0 = time.monotonic()
    puller = asyncio.create_task(bus.pull("bl-s"))
    await asyncio.sleep(0.03)
    await bus.publish("bl", msgs(2))
    batch = await asyncio.wait_for(puller, 1)
    assert [m.data for m in batch] == [1, 2]
    assert time.monotonic() - t0 >= 0.14


async def test_flush_ends_the_wait_for_a_fuller_batch(make_bus: MakeBus) -> None:
    bus = await make_bus("fl", config("fl-s", "fl", batch=policy(max_messages=100, latency=5)))
    await bus.publish("fl", msgs(1))
    puller = asyncio.create_task(bus.pull("fl-s"))
    await asyncio.sleep(0.05)
    assert not puller.done()  # waiting up to 5 s for more
    bus.flush()
    assert [m.data for m in await asyncio.wait_for(puller, 0.5)] == [1]
    await bus.publish("fl", msgs(2))
    assert [m.data for m in await pull(bus, "fl-s", within=0.5)] == [2]  # and from now on


async def test_cancelled_pull_gives_its_messages_back(make_bus: MakeBus) -> None:
    bus = await make_bus("cp", config("cp-s", "cp", batch=policy(max_messages=2, latency=5)))
    await bus.publish("cp", msgs(1))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bus.pull("cp-s"), 0.02)  # cancelled while filling its batch
    assert bus.stats("cp-s").outstanding_leases == 0
    await bus.publish("cp", msgs(2))
    batch = await pull(bus, "cp-s", within=0.5)
    assert [(m.data, m.attempt) for m in batch] == [(1, 1), (2, 1)]


async def test_close_wakes_pullers_and_blocked_publishers(make_bus: MakeBus) -> None:
    bus = await make_bus("cl", config("cl-s", "cl", max_outstanding_messages=1), sqlite={"max_bytes": 1})
    bus.create_topic("cl-idle")
    bus.create_subscription(config("cl-i", "cl-idle"))
    await bus.publish("cl", msgs(1))
    publisher = asyncio.create_task(bus.publish("cl", msgs(2)))
    puller = asyncio.create_task(bus.pull("cl-i"))
    await asyncio.sleep(0.02)
    assert not publisher.done() and not puller.done()
    await bus.close()
    with pytest.raises(BusClosed):
        await asyncio.wait_for(puller, 0.5)
    with pytest.raises(BusClosed):
        await asyncio.wait_for(publisher, 0.5)
    with pytest.raises(BusClosed):
        await bus.publish("cl", msgs(3))
    with pytest.raises(BusClosed):
        await bus.pull("cl-s")
    await bus.close()  # idempotent


async def test_declarations_are_checked(make_bus: MakeBus) -> None:
    bus = await make_bus("un")
    bus.create_topic("un")  # idempotent
    with pytest.raises(KeyError, match="does not exist"):
        bus.create_subscription(config("un-s", "nope"))
    with pytest.raises(KeyError):
        await bus.pull("nope")
    bus.create_subscription(config("un-s", "un"))
    with pytest.raises(ValueError, match="different config"):
        bus.create_subscription(config("un-s", "un", ordering=True))
    bus.create_subscription(config("un-s", "un"))  # equal config: no-op
    assert bus.subscriptions() == ["un-s"]


async def test_refresh_metrics_sets_gauges(make_bus: MakeBus) -> None:
    metrics = Metrics()
    bus = await make_bus("mt", config("mt-s", "mt"), metrics=metrics)
    await bus.publish("mt", msgs(1, 2, size=40))
    bus.refresh_metrics()
    r = metrics.registry
    assert r.get_sample_value("gateway_subscription_backlog", {"subscription": "mt-s"}) == 2
    assert r.get_sample_value("gateway_subscription_backlog_bytes", {"subscription": "mt-s"}) == 80
    assert r.get_sample_value("gateway_bus_published_total", {"topic": "mt"}) == 2
