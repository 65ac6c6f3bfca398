"""Seek on the durable bus: re-delivery from a time, skipping a backlog, restarts, retention, memory bus.

Real SQLite files in tmp_path, as in test_bus_sqlite.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.bus.memory import MemoryBus
from gateway.core.bus import BatchPolicy, SubscriptionConfig
from gateway.core.seek import SeekUnsupported, parse_seek_time
from tests.unit.test_bus_sqlite import drain, msgs, opened, pull, sub


async def publish_apart(bus: object, topic: str, *data: object) -> list[int]:
    """Publish one message at a time, a few ms apart; return each one's publish time (ns, before it)."""
    times = []
    for d in data:
        times.append(time.time_ns())
        await bus.publish(topic, msgs(d))  # type: ignore[attr-defined]
        await asyncio.sleep(0.005)
    return times


async def test_seek_back_redelivers_from_the_time_only(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t"), sub("other", "t"))
    times = await publish_apart(bus, "t", "a", "b", "c", "d")
    assert [m.data for m in await drain(bus, "s")] == ["a", "b", "c", "d"]
    result = await bus.seek("s", times[2])
    assert (result.redeliver, result.skipped) == (2, 0)
    assert result.oldest_retained_ns is not None and result.oldest_retained_ns <= times[1]
    again = await drain(bus, "s")
    assert [m.data for m in again] == ["c", "d"]
    assert all(m.attempt == 1 for m in again)
    assert bus.stats("other").backlog == 4  # the other subscription of the topic is untouched
    await bus.close()


async def test_seek_to_now_skips_the_backlog_leased_or_not(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t"))
    await bus.publish("t", msgs(*range(10)))
    leased = await pull(bus, "s")
    result = await bus.seek("s", time.time_ns())
    assert (result.redeliver, result.skipped) == (0, 10)
    bus.ack("s", [m.ack_id for m in leased])  # acks of leases from before the seek are ignored
    assert bus.stats("s").backlog == 0
    await bus.publish("t", msgs("new"))
    assert [m.data for m in await drain(bus, "s")] == ["new"]
    await bus.close()


async def test_seek_survives_a_restart(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t"))
    times = await publish_apart(bus, "t", "a", "b", "c")
    await drain(bus, "s")
    await bus.seek("s", times[1])
    await bus.close()
    bus = await opened(tmp_path, sub("s", "t"))
    assert [m.data for m in await drain(bus, "s")] == ["b", "c"]
    await bus.close()
    bus = await opened(tmp_path, sub("s", "t"))  # and once acked, they stay acked
    assert await drain(bus, "s") == []
    await bus.close()


async def test_seek_to_now_survives_a_restart(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t"))
    await bus.publish("t", msgs(*range(5)))
    await bus.seek("s", time.time_ns())
    await bus.close()
    bus = await opened(tmp_path, sub("s", "t"))
    assert bus.stats("s").backlog == 0
    await bus.publish("t", msgs("x"))
    assert [m.data for m in await drain(bus, "s")] == ["x"]
    await bus.close()


async def test_partial_acks_then_seek_then_restart_keeps_the_exact_set(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t"))
    times = await publish_apart(bus, "t", "a", "b", "c", "d", "e")
    batch = await pull(bus, "s")
    bus.ack("s", [m.ack_id for m in batch if m.data in ("b", "d")])  # out of order: c, e stay unacked
    await bus.seek("s", times[2])
    await bus.close()
    bus = await opened(tmp_path, sub("s", "t"))
    assert [m.data for m in await drain(bus, "s")] == ["c", "d", "e"]
    await bus.close()


async def test_seek_cannot_bring_back_what_retention_deleted(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t"), retention=timedelta(milliseconds=300))
    await publish_apart(bus, "t", "old1", "old2")
    await drain(bus, "s")
    await asyncio.sleep(0.4)
    await bus.enforce_retention()
    cut = time.time_ns()
    await publish_apart(bus, "t", "new")
    await drain(bus, "s")
    result = await bus.seek("s", cut - 10 * 10**9)  # asks for more than is retained
    assert result.redeliver == 1
    assert result.oldest_retained_ns is not None and result.oldest_retained_ns >= cut
    assert [m.data for m in await drain(bus, "s")] == ["new"]
    await bus.close()


async def test_seek_keeps_messages_published_meanwhile_and_ordering(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t", ordering=True))
    times = await publish_apart(bus, "t", "a", "b")
    await drain(bus, "s")
    seeking = asyncio.create_task(bus.seek("s", times[0]))
    await asyncio.sleep(0)  # the seek now waits for its read in the writer thread
    await bus.publish("t", msgs("c", key="k"))
    await seeking
    assert [m.data for m in await drain(bus, "s")] == ["a", "b", "c"]
    await bus.close()
    bus = await opened(tmp_path, sub("s", "t", ordering=True))
    assert await drain(bus, "s") == []
    await bus.close()


async def test_a_pull_filling_its_batch_during_a_seek_hands_out_the_new_position(tmp_path: Path) -> None:
    slow = BatchPolicy(max_messages=1000, max_latency=timedelta(milliseconds=300))
    bus = await opened(tmp_path, sub("s", "t", batch=slow))
    times = await publish_apart(bus, "t", "a", "b", "c")
    pulling = asyncio.create_task(bus.pull("s"))  # leases a, b, c and waits for more
    await asyncio.sleep(0.05)
    await bus.seek("s", times[1])
    batch = await asyncio.wait_for(pulling, 2)
    assert [m.data for m in batch] == ["b", "c"]
    bus.ack("s", [m.ack_id for m in batch])
    assert bus.stats("s").backlog == 0
    await bus.close()


async def test_seek_refusals(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t"))
    with pytest.raises(KeyError):
        await bus.seek("nope", 0)
    with pytest.raises(ValueError, match="future"):
        await bus.seek("s", time.time_ns() + 3600 * 10**9)
    await bus.close()
    memory = MemoryBus()
    memory.create_topic("t")
    memory.create_subscription(SubscriptionConfig(name="s", topic="t"))
    with pytest.raises(SeekUnsupported, match="durable sqlite bus"):
        await memory.seek("s", 0)


def test_parse_seek_time() -> None:
    now = 1_800_000_000 * 10**9
    assert parse_seek_time("now", now) == now
    assert parse_seek_time("-2h", now) == now - 7200 * 10**9
    assert parse_seek_time("90s", now) == now - 90 * 10**9
    assert parse_seek_time("2027-01-15T08:00:00.000001Z", now) == 1_800_000_000_000_001_000
    with pytest.raises(ValueError, match="timezone"):
        parse_seek_time("2027-01-15T08:00:00", now)
    with pytest.raises(ValueError, match="future"):
        parse_seek_time("+1h", now)
    with pytest.raises(ValueError, match="not a time"):
        parse_seek_time("yesterday", now)


async def test_seek_under_drop_oldest_keeps_the_ledger_consistent(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t"), max_bytes=4000, full_policy="drop_oldest")
    times = await publish_apart(bus, "t", *(f"m{i:03d}" for i in range(20)))
    await drain(bus, "s")
    result = await bus.seek("s", times[0])
    assert result.redeliver == 20
    assert bus.storage_stats().unacked_messages == 20
    await bus.publish("t", msgs(*(f"x{i:03d}" for i in range(200))))  # over max_bytes: the oldest go first
    got = [m.data for m in await drain(bus, "s")]
    assert bus.storage_stats().dropped_oldest > 0
    assert got == sorted(got) and got[-1] == "x199"  # what is left arrives in order, the newest kept
    assert bus.storage_stats().unacked_messages == 0
    await bus.close()
