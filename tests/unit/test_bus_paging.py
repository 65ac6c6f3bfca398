"""The SQLite bus's disk-backed backlog: a subscription's window in memory, the rest paged in from disk.

`max_outstanding_*` bound what a durable subscription holds in memory; publishers wait only on
`bus.sqlite.max_bytes`. These tests check that order (per ordering key too), once-only
delivery, restarts, drop_oldest and seek hold across pages.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from pathlib import Path

from gateway.bus.sqlite import SQLiteBus
from gateway.core.bus import BatchPolicy, OutgoingMessage
from tests.unit.test_bus_sqlite import NOW, drain, msgs, opened, pull, sub

N = 10_000
WINDOW = 100
KEYS = 7


def keyed(start: int, stop: int) -> list[OutgoingMessage]:
    return [OutgoingMessage(i, 10, f"k{i % KEYS}") for i in range(start, stop)]


async def publish_all(bus: SQLiteBus, start: int, stop: int, step: int = 250) -> None:
    """Publish start..stop; no publish may wait (the window being full must not block it)."""
    for k in range(start, stop, step):
        await asyncio.wait_for(bus.publish("t", keyed(k, min(stop, k + step))), 2.0)


async def consume(bus: SQLiteBus, name: str, want: int, got: list[int], peak: list[int]) -> None:
    """Pull and ack until `want` messages more are in `got`, recording the window's peak size."""
    target = len(got) + want
    s = bus._subs[name]
    while len(got) < target:
        batch = await pull(bus, name, 2.0)
        peak.append(max(len(s.held), s.count))
        got.extend(m.data for m in batch)
        bus.ack(name, [m.ack_id for m in batch])


def assert_ordered(got: list[int], n: int) -> None:
    assert sorted(got) == list(range(n)), "each message exactly once"
    for key in range(KEYS):
        of_key = [v for v in got if v % KEYS == key]
        assert of_key == sorted(of_key), f"key k{key} out of order"


async def test_a_small_window_takes_a_large_backlog_without_blocking_and_delivers_it_in_order(
    tmp_path: Path,
) -> None:
    for ordering in (False, True):
        s = sub(f"w{ordering}", "t", ordering=ordering, max_outstanding_messages=WINDOW)
        bus = await opened(tmp_path / str(ordering), s, max_bytes=1 << 30)
        await publish_all(bus, 0, N)
        held = bus._subs[s.name]
        assert len(held.held) <= WINDOW and held.count <= WINDOW
        assert bus.stats(s.name).backlog == N  # the on-disk part counts
        assert bus.storage_stats().unacked_messages == N
        got: list[int] = []
        peak: list[int] = []
        await consume(bus, s.name, N, got, peak)
        assert max(peak) <= WINDOW
        if ordering:
            assert_ordered(got, N)
        else:
            assert got == list(range(N))  # publish order, page after page
        assert bus.stats(s.name).backlog == 0 and bus.storage_stats().unacked_messages == 0
        assert not await drain(bus, s.name, wait=0.1)
        await bus.close()


async def test_paging_resumes_after_close_and_reopen_in_the_middle(tmp_path: Path) -> None:
    s = sub(
        "r", "t", ordering=True, max_outstanding_messages=WINDOW, batch=BatchPolicy(max_messages=64, max_latency=NOW)
    )
    bus = await opened(tmp_path, s)
    await publish_all(bus, 0, N // 2)
    got: list[int] = []
    peak: list[int] = []
    await consume(bus, "r", N // 4, got, peak)
    await publish_all(bus, N // 2, N)
    await bus.close()

    bus = await opened(tmp_path, s)
    assert bus.stats("r").backlog == N - len(got)
    restored = bus._subs["r"]
    assert len(restored.held) <= WINDOW  # the restore loads only the window
    await consume(bus, "r", N - len(got), got, peak)
    assert max(peak) <= WINDOW
    assert_ordered(got, N)
    assert not await drain(bus, "r", wait=0.1)
    await bus.close()


async def test_drop_oldest_counts_and_settles_messages_held_only_on_disk(tmp_path: Path) -> None:
    payload = "y" * 100  # about 125 stored bytes each
    bus = await opened(tmp_path, sub("o", "t", max_outstanding_messages=5), max_bytes=5000, full_policy="drop_oldest")
    await bus.publish("t", msgs(*(f"{i:03d}{payload}" for i in range(30))))  # 5 in memory, 25 on disk
    assert bus._subs["o"].disk.count == 25
    await bus.publish("t", msgs(*(f"{i:03d}{payload}" for i in range(30, 60))))
    stats = bus.storage_stats()
    dropped = stats.dropped_oldest
    assert dropped > 5, "the drops reached past the window into the on-disk backlog"
    assert stats.unacked_bytes <= 5000 and stats.unacked_messages == 60 - dropped
    assert bus.stats("o").backlog == 60 - dropped
    got = [m.data for m in await drain(bus, "o", wait=0.3)]
    assert got == [f"{i:03d}{payload}" for i in range(dropped, 60)]  # the oldest went, the rest in order
    await bus.close()
    bus = await opened(tmp_path, sub("o", "t", max_outstanding_messages=5))
    assert bus.stats("o").backlog == 0  # the drops of on-disk messages were committed as settled
    await bus.close()


async def test_seek_repages_from_the_seek_point(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("s", "t", max_outstanding_messages=10))
    await bus.publish("t", msgs(*range(50)))
    mark = time.time_ns()
    await asyncio.sleep(0.002)
    await bus.publish("t", msgs(*range(50, 100)))
    got: list[int] = []
    await consume(bus, "s", 100, got, [])
    assert got == list(range(100))
    result = await bus.seek("s", mark)
    assert result.redeliver == 50
    assert bus.stats("s").backlog == 50 and len(bus._subs["s"].held) <= 10
    await bus.publish("t", msgs(*range(100, 120)))
    again = [m.data for m in await drain(bus, "s")]
    assert again == list(range(50, 120))
    await bus.close()


async def test_drops_during_page_reads_under_pipelined_hand_overs_lose_nothing_and_resurrect_nothing(
    tmp_path: Path,
) -> None:
    """drop_oldest can drop every message of a page being read, which lets a second read start
    while the first is under way; each read must then move in only its own messages. (A read
    once took the other read's messages for its own when their counts matched: dropped
    messages came back and as many live ones vanished, counted nowhere.)"""
    rnd = random.Random(20261128)
    policy = BatchPolicy(max_messages=50, max_latency=timedelta(milliseconds=5))
    for round_ in range(3):
        bus = await opened(
            tmp_path / str(round_), sub("d", "t", max_outstanding_messages=5, batch=policy),
            max_bytes=30_000, full_policy="drop_oldest",
        )  # fmt: skip
        leased: list[int] = []
        puller = asyncio.create_task(_lease_without_acking(bus, "d", leased))
        pending: list[asyncio.Future[None]] = []
        published = 0
        for k in range(200):  # up to 5 hand-overs committing at once, as the client ingress does
            batch = [OutgoingMessage(published + i, rnd.randint(10, 1500)) for i in range(rnd.randint(1, 5))]
            pending.append(
                await bus.hand_over("t", [OutgoingMessage(f"{m.data:05d}" + "x" * m.size, m.size) for m in batch])
            )
            published += len(batch)
            if len(pending) > 4:
                await pending.pop(0)
            if k % 3 == 0:
                await asyncio.sleep(0.001)
        for done in pending:
            await done
        await asyncio.sleep(0.1)
        puller.cancel()
        dropped = bus.storage_stats().dropped_oldest
        assert dropped > published / 2
        assert bus.stats("d").backlog + dropped == published
        for ack_id in list(bus._subs["d"].leased):  # the leases run out: everything held comes again
            bus.nack("d", [ack_id])
        rest = [int(m.data[:5]) for m in await drain(bus, "d", wait=0.3)]
        assert sorted(rest) == list(
            range(dropped, published)
        )  # each kept one once (nacked ones first): the oldest went
        await bus.close()


async def _lease_without_acking(bus: SQLiteBus, name: str, leased: list[int]) -> None:
    while True:
        leased += [m.ack_id for m in await bus.pull(name)]
