"""The client ingress's pipelined hand-over against a real Mosquitto: with a slow commit,
several batches commit at once, every message is handed over once and in order, and each
PUBACK goes out in order and only after its own batch's commit (and every older one's)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiomqtt
import pytest

from gateway.core.message import RawMessage
from gateway.ingress import client_pipeline
from tests.integration.test_ingress_client import Collector, make, numbered, publish, running, wait_for
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration


class SlowCommits:
    """A staged handler whose commits take `delay` seconds each, one after the other (like a
    group commit per batch); records the batches and how many were committing at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[list[bytes]] = []
        self.commits: list[asyncio.Future[None]] = []
        self.peak = 0
        self._last_done = 0.0

    async def __call__(self, messages: Sequence[RawMessage]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        self.batches.append([m.payload for m in messages])
        commit: asyncio.Future[None] = loop.create_future()
        self.commits.append(commit)
        self._last_done = max(loop.time(), self._last_done) + self.delay
        loop.call_at(self._last_done, commit.set_result, None)
        self.peak = max(self.peak, sum(not c.done() for c in self.commits))
        return commit

    def committed_messages(self) -> int:
        """Messages of the batches whose commit, and every older one's, is done."""
        n = 0
        for batch, commit in zip(self.batches, self.commits, strict=True):
            if not commit.done():
                break
            n += len(batch)
        return n


async def test_slow_commits_are_pipelined_and_acknowledged_in_order(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = SlowCommits(delay=0.02)
    acked: list[int] = []
    violations: list[str] = []
    real_write = client_pipeline.write_pubacks

    def checked_write(inner: Any, mids: list[int]) -> None:
        acked.extend(mids)
        if len(acked) > handler.committed_messages():
            violations.append(f"{len(acked)} acknowledged, {handler.committed_messages()} committed")
        real_write(inner, mids)

    monkeypatch.setattr(client_pipeline, "write_pubacks", checked_write)
    ingress = make(mosquitto.port, "cli-pipe", "cli-pipe/#")
    ingress.staged_handler = handler
    expected = numbered("pipe", 800)
    async with running(ingress, Collector()):
        await asyncio.gather(*(publish(mosquitto.port, f"cli-pipe/dev-{k}", expected[k::4]) for k in range(4)))
        await wait_for(lambda: len(acked) >= len(expected))
        await asyncio.sleep(0.3)  # a duplicate would arrive now
    got = [p for batch in handler.batches for p in batch]
    assert sorted(got) == expected and len(set(got)) == len(got), "each message handed over once"
    for k in range(4):  # in order per publisher (the broker's order per publisher and topic)
        assert [p for p in got if p in set(expected[k::4])] == expected[k::4]
    assert violations == []
    assert len(acked) == len(expected) and acked == sorted(acked), "PUBACKs in receipt order"
    assert handler.peak > 1, "more than one batch committing at once"

    # The PUBACKs reached the broker: the persistent session has nothing to redeliver.
    again = Collector()
    async with running(make(mosquitto.port, "cli-pipe", "cli-pipe/#"), again):
        await asyncio.sleep(0.5)
    assert again.messages == []


async def test_at_a_moderate_rate_linger_gathers_messages_into_fewer_batches(mosquitto: Mosquitto) -> None:
    """Published about 1 ms apart, messages go one or two per batch without `linger` and
    several per batch with it; each arrives once, in order, within about twice the linger."""
    sizes: dict[str, list[int]] = {}
    for linger in ("0s", "30ms"):
        handler = SlowCommits(delay=0.0)
        ingress = make(mosquitto.port, f"cli-linger-{linger}", f"cli-linger-{linger}/#", linger=linger)
        ingress.staged_handler = handler
        expected = numbered(f"linger-{linger}", 120)
        async with running(ingress, Collector()):
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"pub-linger-{linger}") as pub:
                for payload in expected:
                    await pub.publish(f"cli-linger-{linger}/dev", payload, qos=1)
                    await asyncio.sleep(0.001)
            total = len(expected)
            await wait_for(lambda h=handler, n=total: sum(map(len, h.batches)) >= n)
        assert [p for batch in handler.batches for p in batch] == expected
        sizes[linger] = [len(batch) for batch in handler.batches]
    assert len(sizes["30ms"]) * 4 <= len(sizes["0s"]), sizes
