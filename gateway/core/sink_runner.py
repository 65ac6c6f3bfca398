"""The one loop that feeds a sink from a bus subscription and turns `WriteResult`s into acks.

Sinks do I/O only (`gateway.core.sink`). The runner pulls batches (shaped by the
subscription's `BatchPolicy`), makes at most `max_in_flight` write calls at once, retries
transient failures with jittered backoff, halves batches that are too large,
dead-letters permanent refusals, and acks. Guarantees:

* At least once: a message is acked only when its own outcome is final (stored, or its
  `DeadLetter` held by the bus on `dead_letter_topic`); a batch is settled per index.
* Sinks see readings one by one: a `ReadingBatch` message is unpacked into its readings,
  each settled on its own (a refused one is dead-lettered alone), and the message is acked
  once all of them are settled. Counts (`max_rate`, metrics, batch sizes) are of items.
* Transient failures (`retry`, or an exception from `write`) are retried in place,
  indefinitely, and are no delivery attempts: held messages get their lease extended every
  `lease_extend_interval`, so a store down for an hour keeps its backlog on the bus.
* `max_in_flight=1` writes batches strictly in pull order, each pulled once the previous
  one is settled (within a batch, retried items may land after later ones).
* `stop(drain_timeout)` lets in-flight writes and their retries finish until the timeout,
  then cancels them; what was not settled stays unacked, for the bus to redeliver.
* With `max_rate` set, every write call (retries included) first takes one token per item
  from a token bucket (`gateway.core.rate_limit`): the sink never gets more than `max_rate`
  items per second beyond a one-second burst, however large the backlog it replays.
* With `max_retries` set, items still failing transiently after that many retries are
  dead-lettered (as refused items are) with "gave up after N retries: <last reason>".
* `stored_watermark()`: every `Reading` this runner pulled whose `received_ns` is at or
  below it is settled (stored or dead-lettered); see `gateway.core.held_messages`. It
  assumes the subscription delivers readings in order of receipt (true for fresh messages
  of the memory bus; a redelivery after a lost lease can land behind it).

Not promised: exactly once (a cancelled write, or a lease that expired anyway because
`lease_extend_interval` exceeds the `ack_deadline`, is delivered again: sinks write
idempotently). With `dead_letter_topic=None` a refused item is logged, counted, dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import timedelta
from operator import attrgetter
from typing import Any, TypeVar

from gateway.core.backoff import Backoff
from gateway.core.bus import Bus, BusClosed, OutgoingMessage, ReceivedMessage
from gateway.core.held_messages import HeldMessages
from gateway.core.message import Reading, dead_letter_for
from gateway.core.metrics import Metrics, observe_ages
from gateway.core.rate_limit import TokenBucket
from gateway.core.runner_config import RunnerConfig
from gateway.core.sink import Sink, WriteResult

__all__ = ["RunnerConfig", "SinkRunner"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_received_ns = attrgetter("received_ns")


class SinkRunner:
    """Drives one sink from one subscription. Construction does no I/O; `run()` once, `stop()` any time."""

    def __init__(self, sink: Sink, bus: Bus, subscription: str, metrics: Metrics, config: RunnerConfig) -> None:
        self._sink = sink
        self._bus = bus
        self.subscription = subscription
        self.config = config
        self._written = metrics.sink_written.labels(sink.name)
        self._failed = metrics.sink_failed.labels(sink.name)
        self._retried = metrics.sink_retried.labels(sink.name)
        self._batch_size = metrics.sink_batch_size.labels(sink.name)
        self._write_seconds = metrics.sink_write_seconds.labels(sink.name)
        self._healthy_gauge = metrics.sink_healthy.labels(sink.name)
        self._ingest_to_stored = metrics.ingest_to_stored_seconds.labels(sink.name)
        self._limiter = TokenBucket(config.max_rate) if config.max_rate is not None else None
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._drain_deadline = 0.0
        self._run_called = False
        self._started = False
        self._failing = False
        self._traced = False
        self._warned_malformed = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._holding = HeldMessages()

    @property
    def name(self) -> str:
        return self._sink.name

    @property
    def sink(self) -> Sink:
        """The sink this runner drives (for hot reload of its settings)."""
        return self._sink

    def stored_watermark(self) -> int:
        """Epoch ns at or below which every reading pulled so far is settled (see the module docstring)."""
        return self._holding.stored_watermark()

    def healthy(self) -> bool:
        """True once the sink started, while no write is failing and the sink says it is healthy."""
        return self._started and not self._failing and self._sink.healthy()

    async def stop(self, drain_timeout: timedelta) -> None:
        """Stop pulling, drain in-flight writes until `drain_timeout`, cancel the rest, close the sink.

        Returns when `run()` has returned. Idempotent (a later call's timeout is ignored);
        before `run()` it makes `run()` return at once without starting the sink.
        """
        if not self._stopping.is_set():
            self._drain_deadline = asyncio.get_running_loop().time() + drain_timeout.total_seconds()
            self._stopping.set()
        if self._run_called:
            await self._finished.wait()

    async def run(self) -> None:
        """Start the sink (retried with backoff), then pull and write until `stop()` or `BusClosed`.

        After `BusClosed` in-flight writes still finish (unless a `stop()` bounds them). The sink
        is closed on the way out if `start()` succeeded (not after a `start()` cancelled by stop).
        Bus errors other than `BusClosed` end `run()` with that error.
        """
        if self._run_called:
            raise RuntimeError(f"SinkRunner {self.name}: run() may be called only once")
        self._run_called = True
        stop_waiter: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            if not self._stopping.is_set() and await self._start_sink(stop_waiter):
                async with asyncio.TaskGroup() as tg:
                    extender = tg.create_task(self._extend_leases(), name=f"extend:{self.name}")
                    await self._pull_loop(tg, stop_waiter)
                    await self._drain(stop_waiter)
                    extender.cancel()
        finally:
            stop_waiter.cancel()
            try:
                if self._started:
                    await self._sink.close()
            except Exception as exc:
                self._log(logging.ERROR, "close failed: %r", exc, exc=exc)
            finally:
                self._started = False
                self._healthy_gauge.set(0)
                self._finished.set()

    def _log(self, level: int, msg: str, *args: object, exc: BaseException | None = None) -> None:
        log.log(level, "sink %s: " + msg, self.name, *args, exc_info=exc, extra={"sink": self.name})

    async def _until_stopped(self, aw: Awaitable[T], stop_waiter: asyncio.Future[Any]) -> asyncio.Future[T]:
        """Run `aw` until it finishes or `stop()` is called (then it is cancelled); return its future."""
        fut = asyncio.ensure_future(aw)
        either: set[asyncio.Future[Any]] = {fut, stop_waiter}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fut.done():
                fut.cancel()
                await asyncio.wait({fut})
        return fut

    async def _start_sink(self, stop_waiter: asyncio.Future[Any]) -> bool:
        backoff = Backoff(self.config.retry_min_backoff, self.config.retry_max_backoff)
        while not self._stopping.is_set():
            attempt = await self._until_stopped(self._sink.start(), stop_waiter)
            if attempt.cancelled():
                return False
            if (exc := attempt.exception()) is None:
                self._started = True
                self._healthy_gauge.set(1)
                if backoff.attempt:
                    self._log(logging.INFO, "started after %d failed attempts", backoff.attempt)
                return True
            if not isinstance(exc, Exception):
                raise exc
            if backoff.attempt == 0:
                self._log(logging.WARNING, "start failed, retrying with backoff: %r", exc, exc=exc)
            await asyncio.wait({stop_waiter}, timeout=backoff.next_delay())
        return False

    async def _pull_loop(self, tg: asyncio.TaskGroup, stop_waiter: asyncio.Future[Any]) -> None:
        while not self._stopping.is_set():
            self._inflight = {t for t in self._inflight if not t.done()}
            if len(self._inflight) >= self.config.max_in_flight:
                await asyncio.wait({stop_waiter, *self._inflight}, return_when=asyncio.FIRST_COMPLETED)
                continue
            pull = await self._until_stopped(self._bus.pull(self.subscription), stop_waiter)
            if pull.cancelled():
                return
            try:
                batch = pull.result()
            except BusClosed:
                self._log(logging.INFO, "bus closed, no more batches")
                return
            if batch:
                self._inflight.add(tg.create_task(self._deliver(batch)))

    async def _drain(self, stop_waiter: asyncio.Future[Any]) -> None:
        pending = {t for t in self._inflight if not t.done()}
        while pending and not self._stopping.is_set():  # ended by BusClosed: finish, unless stop() bounds it
            await asyncio.wait({stop_waiter, *pending}, return_when=asyncio.FIRST_COMPLETED)
            pending = {t for t in pending if not t.done()}
        if pending:
            timeout = max(0.0, self._drain_deadline - asyncio.get_running_loop().time())
            _, pending = await asyncio.wait(pending, timeout=timeout)
        if pending:
            self._log(logging.WARNING, "drain timeout: cancelling %d batches, left unacked", len(pending))
            for task in pending:
                task.cancel()

    async def _extend_leases(self) -> None:
        with contextlib.suppress(BusClosed):
            while True:
                await asyncio.sleep(self.config.lease_extend_interval.total_seconds())
                if self._holding:
                    self._bus.extend(self.subscription, list(self._holding.ack_ids))

    async def _deliver(self, batch: list[ReceivedMessage]) -> None:
        ids, items, owners = self._holding.take(batch)
        try:
            await self._write_until_settled(items, owners)
        except BusClosed:
            self._log(logging.WARNING, "bus closed while settling a batch; it stays unacked")
        finally:
            self._holding.release(ids)  # those not settled: the write was cancelled or the bus closed

    async def _write_until_settled(self, items: list[Any], owners: list[ReceivedMessage]) -> None:
        """Write `items` (`owners[i]` is the bus message `items[i]` came from) until each is settled."""
        backoff = Backoff(self.config.retry_min_backoff, self.config.retry_max_backoff)
        while items:
            if self._limiter is not None:
                await self._limiter.acquire(len(items))
            started = time.perf_counter()
            try:
                result, exc = await self._sink.write(items), None
            except Exception as e:
                result, exc = WriteResult.retry_all(len(items), repr(e)), e
            self._write_seconds.observe(time.perf_counter() - started)
            self._batch_size.observe(len(items))
            (accepted, rejected, split, retry), malformed = result.sort_out(len(items))
            if malformed and not self._warned_malformed:
                self._warned_malformed = True
                self._log(logging.ERROR, "returned a WriteResult that does not list every item once")
            self._note_streak((result.reason or "the sink asked to retry") if retry else None, exc)
            if len(accepted) == len(items):
                self._accept(items, owners)
            elif accepted:
                self._accept([items[i] for i in accepted], [owners[i] for i in accepted])
            if rejected:
                await self._reject([(items[i], owners[i], why) for i, why in rejected])
            if len(split) == 1:
                alone = result.reason or "too large to write, even alone"
                await self._reject([(items[split[0]], owners[split[0]], alone)])
            elif split:
                half = len(split) // 2
                await self._write_until_settled([items[i] for i in split[:half]], [owners[i] for i in split[:half]])
                await self._write_until_settled([items[i] for i in split[half:]], [owners[i] for i in split[half:]])
            if not retry:
                return
            limit = self.config.max_retries
            if limit is not None and backoff.attempt >= limit:
                last = result.reason or "the sink asked to retry"
                await self._reject([(items[i], owners[i], f"gave up after {limit} retries: {last}") for i in retry])
                return
            self._retried.inc(len(retry))
            delay = backoff.next_delay()
            if result.retry_after is not None:
                delay = max(result.retry_after, self.config.retry_min_backoff).total_seconds()
            await asyncio.sleep(delay)
            items, owners = [items[i] for i in retry], [owners[i] for i in retry]

    def _settle(self, owners: list[ReceivedMessage]) -> None:
        """Count one settled item for each of `owners`; ack the messages whose items are all settled."""
        if done := self._holding.settle(owners):
            self._bus.ack(self.subscription, done)

    def _accept(self, items: list[Any], owners: list[ReceivedMessage]) -> None:
        self._settle(owners)
        self._written.inc(len(items))
        if set(map(type, items)) == {Reading}:
            stamps = list(map(_received_ns, items))
        else:  # readings, and alerts/invalidations they caused (no receive time: not observed)
            stamps = [ns for item in items if type(ns := getattr(item, "received_ns", 0)) is int and ns]
        observe_ages(self._ingest_to_stored, time.time_ns(), stamps)

    async def _reject(self, rejected: list[tuple[Any, ReceivedMessage, str]]) -> None:
        topic = self.config.dead_letter_topic
        if topic is None:
            reasons = "; ".join(sorted({reason for _, _, reason in rejected})[:3])
            self._log(logging.ERROR, "refused %d items, no dead-letter topic: dropped: %s", len(rejected), reasons)
        else:
            source = f"sink:{self.name}"
            dls = [dead_letter_for(item, why, source=source, attempts=m.attempt) for item, m, why in rejected]
            if not await self._bus.publish(topic, [OutgoingMessage(d, len(d.payload) + len(d.reason)) for d in dls]):
                self._log(logging.ERROR, "no subscription on topic %s: %d dead letters dropped", topic, len(dls))
        self._failed.inc(len(rejected))
        self._settle([m for _, m, _ in rejected])

    def _note_streak(self, failure: str | None, exc: Exception | None) -> None:
        """Warn once per failure streak (and once with a traceback), say when it recovers."""
        if failure is None:
            if self._failing:
                self._log(logging.INFO, "recovered")
                self._healthy_gauge.set(1)
            self._failing = self._traced = False
            return
        trace = exc is not None and not self._traced
        if not self._failing or trace:
            self._log(logging.WARNING, "write failed, retrying: %s", failure, exc=exc if trace else None)
        self._failing, self._traced = True, self._traced or trace
        self._healthy_gauge.set(0)
