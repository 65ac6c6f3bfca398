"""The client ingress's batches: taking them from the receive queue, handing them over in
order, and acknowledging them in order while several commit at once.

`AckPipeline` holds the batches handed over (by a `StagedBatchHandler`) whose commit is not
done yet, at most `depth`, in hand-over order. `ready()` gives the packet ids of the batches at
the head whose commit is done, oldest first, so that PUBACKs go out strictly in order and each
only after its own batch is committed: a batch committed before an older one waits for it.
When a batch's commit fails, `ready()` gives what precedes it and then raises `BatchFailed`;
that batch and every later one stay unacknowledged (the pipeline is then spent: the ingress
reconnects and the broker redelivers them, in order).

`BatchFlow` drives one connection's batches through a `StagedBatchHandler` and a pipeline:
it hands them over one at a time, in order (the next one only once the previous hand-over
returned, so the bus receives them in receipt order) and writes their PUBACKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, NamedTuple

from gateway.core.message import RawMessage
from gateway.ingress.base import StagedBatchHandler
from gateway.ingress.mqtt_client import write_pubacks

log = logging.getLogger("gateway.ingress.client")

MAX_BATCH = 1000  # messages per handler call ...
MAX_BATCH_BYTES = 256 * 1024  # ... and payload bytes: one call runs without yielding to the event loop


class Incoming(NamedTuple):
    """A publish as read from the socket."""

    topic: str
    payload: bytes
    qos: int
    mid: int  # packet id (0 for QoS 0)
    received_ns: int


class BatchFailed(Exception):
    """A batch's commit failed (the cause is chained); `messages` is its size."""

    def __init__(self, messages: int) -> None:
        super().__init__(f"a batch of {messages} message(s) failed")
        self.messages = messages


class HandlerFailed(Exception):
    """The handler raised or a batch's commit failed: reconnect so that the broker redelivers."""


class _InFlight(NamedTuple):
    committed: asyncio.Future[Any]
    mids: list[int]  # packet ids of its QoS 1 messages, in receipt order
    messages: int


class AckPipeline:
    """Batches awaiting their commit, in hand-over order (see the module docstring)."""

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = depth
        self.peak = 0  # most batches awaiting their commit at once, since creation
        self._batches: deque[_InFlight] = deque()

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def full(self) -> bool:
        return len(self._batches) >= self.depth

    @property
    def head(self) -> asyncio.Future[Any] | None:
        """The oldest batch's commit, or None when none is awaited."""
        return self._batches[0].committed if self._batches else None

    def add(self, committed: asyncio.Future[Any], items: list[Incoming]) -> None:
        """Track a batch just handed over (the newest)."""
        assert not self.full, "hand over only while not full"
        self._batches.append(_InFlight(committed, [i.mid for i in items if i.qos], len(items)))
        self.peak = max(self.peak, len(self._batches))

    def ready(self) -> list[int]:
        """Remove the batches at the head whose commit is done; their packet ids, in order.

        Raises BatchFailed (from the commit's error) when the head's commit failed, after
        removing it; the ids of the batches before it are then lost to the caller, so call
        `ready()` whenever a head completes (`wait_head`) to acknowledge them first.
        """
        mids: list[int] = []
        batches = self._batches
        while batches and batches[0].committed.done():
            batch = batches[0]
            error = None if batch.committed.cancelled() else batch.committed.exception()
            if batch.committed.cancelled() or error is not None:
                if mids:  # acknowledge the older ones first; the failure is raised by the next call
                    return mids
                batches.popleft()
                raise BatchFailed(batch.messages) from (error or asyncio.CancelledError())
            batches.popleft()
            mids += batch.mids
        return mids

    async def wait_head(self) -> None:
        """Wait until the oldest batch's commit is done (or failed); at once when none is awaited."""
        head = self.head
        if head is not None:
            await asyncio.wait({head})

    def abandon(self) -> int:
        """Forget every batch (the connection ended: they stay unacknowledged); their number.

        Their commits go on; an error of theirs is retrieved here so that it is not logged as
        never retrieved (the broker redelivers those batches)."""
        n = len(self._batches)
        for batch in self._batches:
            batch.committed.add_done_callback(_retrieve)
        self._batches.clear()
        return n


class BatchFlow:
    """One connection's batches: handed to `handler` in order, acknowledged in order on `inner`
    (a paho client; None: no PUBACK, for QoS 0 leftovers), at most `depth` awaiting their commit."""

    def __init__(self, handler: StagedBatchHandler, depth: int, received: Any, inner: Any) -> None:
        self.pipe = AckPipeline(depth)
        self.busy = False  # in the handler's first step, or waiting for a commit to finish
        self._handler = handler
        self._received = received  # the messages-received counter
        self._inner = inner

    async def hand_over(self, items: list[Incoming]) -> None:
        """Hand `items` over (the handler's first step) and track its commit. When the handler
        raises: acknowledge the older batches that commit, then raise HandlerFailed."""
        self._received.inc(len(items))
        self.busy = True
        try:
            committed = await self._handler([RawMessage(i.topic, i.payload, i.qos, i.received_ns, None) for i in items])
        except Exception as exc:
            log.exception("handler failed; messages not acknowledged", extra={"messages": len(items)})
            with contextlib.suppress(HandlerFailed):
                await self.settle()
            raise HandlerFailed from exc
        finally:
            self.busy = False
        self.pipe.add(committed, items)

    def acknowledge(self) -> None:
        """PUBACK the batches at the head whose commit is done; HandlerFailed when one failed."""
        try:
            mids = self.pipe.ready()
        except BatchFailed as exc:
            cause = exc.__cause__
            log.error("handler failed; messages not acknowledged", exc_info=cause, extra={"messages": exc.messages})
            raise HandlerFailed from exc
        if self._inner is not None:
            write_pubacks(self._inner, mids)

    async def settle(self) -> None:
        """Wait for every batch's commit, acknowledging them in order (HandlerFailed as above)."""
        self.busy = True
        try:
            while self.pipe:
                await self.pipe.wait_head()
                self.acknowledge()
        finally:
            self.busy = False


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def take(queue: deque[Incoming]) -> list[Incoming]:
    """The next batch: up to `MAX_BATCH` messages and `MAX_BATCH_BYTES` of payload (at least one)."""
    batch = [queue.popleft()]
    size = len(batch[0].payload)
    while queue and len(batch) < MAX_BATCH and size + len(queue[0].payload) <= MAX_BATCH_BYTES:
        item = queue.popleft()
        size += len(item.payload)
        batch.append(item)
    return batch
