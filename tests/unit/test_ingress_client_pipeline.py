"""The client ingress's pipelined batches (`gateway.ingress.client_pipeline`) with a fake slow
handler and a fake paho client: hand-over order, PUBACKs in order and only after their own
batch's commit, the bound, failures; and `Bus.hand_over` keeping call order on both buses."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.bus.memory import MemoryBus
from gateway.bus.sqlite import SQLiteBus, SQLiteBusConfig
from gateway.core.bus import BatchPolicy, OutgoingMessage, SubscriptionConfig
from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.client_pipeline import AckPipeline, BatchFlow, HandlerFailed, Incoming, take


class FakePaho:
    """Records the PUBACK packet ids `write_pubacks` queues, one list per write."""

    def __init__(self) -> None:
        self.writes: list[list[int]] = []

    def _packet_queue(self, command: int, packet: bytes, mid: int, qos: int) -> None:
        self.writes.append([struct.unpack("!BBH", packet[i : i + 4])[2] for i in range(0, len(packet), 4)])

    @property
    def acked(self) -> list[int]:
        return [mid for write in self.writes for mid in write]


class SlowHandler:
    """A staged handler: records each hand-over and returns a commit the test resolves."""

    def __init__(self, fail_hand_over: int | None = None) -> None:
        self.batches: list[list[bytes]] = []
        self.commits: list[asyncio.Future[None]] = []
        self._fail = fail_hand_over

    async def __call__(self, messages: Sequence[RawMessage]) -> asyncio.Future[None]:
        await asyncio.sleep(0)  # a hand-over may suspend (bus backpressure)
        if self._fail == len(self.batches):
            raise RuntimeError("simulated hand-over failure")
        self.batches.append([m.payload for m in messages])
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.commits.append(commit)
        return commit


def items(first: int, n: int, qos: int = 1) -> list[Incoming]:
    return [Incoming("t", f"m{i}".encode(), qos, i if qos else 0, 0) for i in range(first, first + n)]


def flow(handler: SlowHandler, depth: int = 4) -> tuple[BatchFlow, FakePaho]:
    paho = FakePaho()
    received = Metrics().messages_received.labels("client")
    return BatchFlow(handler, depth, received, paho), paho


async def test_pubacks_wait_for_their_own_commit_and_every_older_one() -> None:
    handler = SlowHandler()
    f, paho = flow(handler)
    for first in (1, 4, 7):
        await f.hand_over(items(first, 3))
    assert len(f.pipe) == 3 and f.pipe.peak == 3  # three batches committing at once
    assert handler.batches == [[b"m1", b"m2", b"m3"], [b"m4", b"m5", b"m6"], [b"m7", b"m8", b"m9"]]
    handler.commits[1].set_result(None)  # a younger batch commits first: it waits for the oldest
    handler.commits[2].set_result(None)
    f.acknowledge()
    assert paho.writes == []
    handler.commits[0].set_result(None)
    f.acknowledge()
    assert paho.writes == [list(range(1, 10))]  # one write, in receipt order
    assert not f.pipe


async def test_the_bound_and_qos0_messages() -> None:
    handler = SlowHandler()
    f, paho = flow(handler, depth=2)
    await f.hand_over(items(1, 2, qos=0))
    await f.hand_over(items(3, 2))
    assert f.pipe.full
    with pytest.raises(AssertionError):
        f.pipe.add(asyncio.get_running_loop().create_future(), items(5, 1))
    handler.commits[0].set_result(None)
    await f.pipe.wait_head()
    f.acknowledge()
    assert paho.acked == [] and not f.pipe.full  # QoS 0: nothing to acknowledge
    handler.commits[1].set_result(None)
    await f.settle()
    assert paho.acked == [3, 4]


async def test_a_failed_commit_is_not_acknowledged_nor_any_later_batch() -> None:
    handler = SlowHandler()
    f, paho = flow(handler)
    for first in (1, 3, 5):
        await f.hand_over(items(first, 2))
    handler.commits[2].set_result(None)
    handler.commits[1].set_exception(OSError("disk I/O error"))
    handler.commits[0].set_result(None)
    f.acknowledge()  # the older batch first ...
    assert paho.acked == [1, 2]
    with pytest.raises(HandlerFailed):  # ... then the failure
        f.acknowledge()
    f.pipe.abandon()
    assert paho.acked == [1, 2]


async def test_a_failed_hand_over_acknowledges_the_older_batches_then_fails() -> None:
    handler = SlowHandler(fail_hand_over=2)
    f, paho = flow(handler)
    await f.hand_over(items(1, 2))
    await f.hand_over(items(3, 2))
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, handler.commits[0].set_result, None)
    loop.call_later(0.05, handler.commits[1].set_result, None)
    with pytest.raises(HandlerFailed):
        await f.hand_over(items(5, 2))
    assert paho.acked == [1, 2, 3, 4] and len(handler.batches) == 2


def test_take_bounds_a_batch() -> None:
    from collections import deque

    queue = deque(items(0, 2500))
    assert [len(take(queue)) for _ in range(3)] == [1000, 1000, 500]


async def test_pipeline_rejects_a_depth_below_one() -> None:
    with pytest.raises(ValueError, match="depth"):
        AckPipeline(0)


def out(*data: Any, key: str = "dev-1") -> list[OutgoingMessage]:
    return [OutgoingMessage(d, 10, key) for d in data]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_hand_overs_keep_call_order_while_commits_are_pending(backend: str, tmp_path: Path) -> None:
    config = SubscriptionConfig(name="s", topic="t", ordering=True, batch=BatchPolicy(max_latency="0s"))
    bus: Any
    if backend == "memory":
        bus = MemoryBus()
    else:
        bus = SQLiteBus(SQLiteBusConfig(synchronous="full"), tmp_path)
        await bus.open()
    bus.create_topic("t")
    bus.create_subscription(config)
    try:
        first = await bus.hand_over("t", out(1, 2, 3))
        second = await bus.hand_over("t", out(4, 5))  # before the first commit is awaited
        assert backend == "memory" or not first.done()  # sqlite: held, not committed yet
        await asyncio.gather(first, second)
        got: list[Any] = []
        while len(got) < 5:
            batch = await asyncio.wait_for(bus.pull("s"), 2)
            got += [m.data for m in batch]
            bus.ack("s", [m.ack_id for m in batch])
        assert got == [1, 2, 3, 4, 5]
        assert await bus.publish("t", out(6)) == 1  # publish is hand_over plus the wait
    finally:
        await bus.close()
