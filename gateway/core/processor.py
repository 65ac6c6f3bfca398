"""The processor contract: consume one subscription, publish derived messages to a topic.

A processor (the alert engine, the cache-change detector) turns items of one bus
subscription into messages for another internal topic. It is driven by the shared
`gateway.core.sink_runner.SinkRunner` through `ProcessorSink`, an adapter that makes a
processor look like a sink; the runner keeps owning batching, lease upkeep, retries, acks
and drain. Guarantees of the adapter:

* Acks follow outputs: `write` returns `accepted` only after `process`'s outputs are held by
  the bus (`Bus.publish` returned). A processor that raises gets its batch retried by the
  runner; with the runner's `max_retries` the batch is then dead-lettered.
* One thing at a time: `process` and `tick` never run concurrently (one lock), and their
  outputs are published in the order they were produced. Processors therefore keep plain
  in-memory state without locks of their own. Run the runner with `max_in_flight: 1` so
  batches are also processed in pull order.
* `tick` is called every `tick_interval` (if not None) from `start()` until `close()`, for
  work driven by time rather than by messages (absence of a device, coalescing windows).
  An exception from `tick` is logged and the next tick still comes.

Not promised: exactly once. A batch retried after `process` raised is processed again, so
processors make `process` robust per item (they skip, log and count a bad item) rather than
raise half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

from gateway.core.bus import Bus, BusClosed, OutgoingMessage
from gateway.core.sink import WriteResult

log = logging.getLogger(__name__)


class Processor(Protocol):
    """Derives messages for `output_topic` from the items of one subscription."""

    name: str
    output_topic: str
    tick_interval: timedelta | None

    async def start(self) -> None:
        """Load state, open files. May raise; the runner retries `start` with backoff."""

    async def process(self, items: Sequence[Any]) -> list[OutgoingMessage]:
        """Update state from `items` (in order); return the messages to publish."""

    async def tick(self, now_ns: int) -> list[OutgoingMessage]:
        """Time-driven work at wall-clock `now_ns`; return the messages to publish."""

    async def close(self) -> None:
        """Persist state, release files. Called once, after the last `process`."""


class ProcessorSink:
    """A `Sink` whose write runs a processor and publishes its outputs. See the module docstring."""

    def __init__(self, processor: Processor, bus: Bus) -> None:
        self.name = processor.name
        self.processor = processor
        self._bus = bus
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        self._healthy = True

    async def start(self) -> None:
        await self.processor.start()
        if self.processor.tick_interval is not None and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop(), name=f"tick:{self.name}")

    async def write(self, items: Sequence[Any]) -> WriteResult:
        if not items:
            return WriteResult()
        async with self._lock:
            outputs = await self.processor.process(items)
            if outputs:
                await self._bus.publish(self.processor.output_topic, outputs)
        return WriteResult.ok(len(items))

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        async with self._lock:
            await self.processor.close()

    def healthy(self) -> bool:
        return self._healthy

    async def run_tick(self) -> None:
        """One tick now (under the lock), publishing its outputs; used by the loop and by tests."""
        async with self._lock:
            outputs = await self.processor.tick(time.time_ns())
            if outputs:
                await self._bus.publish(self.processor.output_topic, outputs)

    async def _tick_loop(self) -> None:
        interval = self.processor.tick_interval
        assert interval is not None
        while True:
            await asyncio.sleep(interval.total_seconds())
            try:
                await self.run_tick()
                self._healthy = True
            except BusClosed:
                return
            except Exception:
                self._healthy = False
                log.exception("processor %s: tick failed", self.name, extra={"processor": self.name})
