"""SinkRunner: acks per outcome, retries in place, splits, dead letters, in-flight limit, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.bus.memory import MemoryBus
from gateway.core.bus import BusClosed, OutgoingMessage, ReceivedMessage, SubscriptionConfig, SubscriptionStats
from gateway.core.message import DeadLetter, Reading
from gateway.core.metrics import Metrics
from gateway.core.sink import WriteResult
from gateway.core.sink_runner import RunnerConfig, SinkRunner

SUB = "tsdb"
MS = timedelta(milliseconds=1)
LOGGER = "gateway.core.sink_runner"

Step = WriteResult | Exception


def ok(items: list[Any]) -> WriteResult:
    return WriteResult.ok(len(items))


class FakeBus:
    """The `Bus` protocol without I/O: the test queues batches; every call is recorded."""

    def __init__(self) -> None:
        self.batches: deque[list[ReceivedMessage]] = deque()
        self.acked: list[int] = []
        self.nacked: list[int] = []
        self.extended: list[list[int]] = []
        self.published: dict[str, list[OutgoingMessage]] = {}
        self.pulls = 0
        self.closed = False
        self._next_id = 0
        self._ready = asyncio.Event()

    def add_batch(self, items: Sequence[Any]) -> list[int]:
        batch = []
        for item in items:
            self._next_id += 1
            batch.append(ReceivedMessage(self._next_id, item, 10, None, 1, time.time_ns()))
        self.batches.append(batch)
        self._ready.set()
        return [m.ack_id for m in batch]

    def create_topic(self, name: str) -> None:
        self.published.setdefault(name, [])

    def create_subscription(self, config: SubscriptionConfig) -> None:
        pass

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> int:
        if self.closed:
            raise BusClosed("closed")
        self.published.setdefault(topic, []).extend(messages)
        return 1

    async def pull(self, subscription: str) -> list[ReceivedMessage]:
        while not self.batches:
            if self.closed:
                raise BusClosed("closed")
            self._ready.clear()
            await self._ready.wait()
        self.pulls += 1
        return self.batches.popleft()

    def ack(self, subscription: str, ack_ids: Sequence[int]) -> None:
        self.acked.extend(ack_ids)

    def nack(self, subscription: str, ack_ids: Sequence[int], delay: timedelta | None = None) -> None:
        self.nacked.extend(ack_ids)

    def extend(self, subscription: str, ack_ids: Sequence[int]) -> None:
        self.extended.append(list(ack_ids))

    def stats(self, subscription: str) -> SubscriptionStats:
        return SubscriptionStats(0, 0, 0, 0.0, 0, len(self.acked), len(self.nacked), 0, 0)

    def subscriptions(self) -> list[str]:
        return [SUB]

    async def close(self) -> None:
        self.closed = True
        self._ready.set()


class FakeSink:
    """A sink scripted per write call (a WriteResult, or an exception to raise); then `default`."""

    name = "fake"

    def __init__(
        self,
        script: Sequence[Step] = (),
        default: Callable[[list[Any]], WriteResult] = ok,
        start_failures: int = 0,
        delay: float = 0.0,
    ) -> None:
        self.script = deque(script)
        self.default = default
        self.start_failures = start_failures
        self.delay = delay
        self.gate: asyncio.Event | None = None
        self.calls: list[list[Any]] = []
        self.call_times: list[float] = []
        self.start_calls = 0
        self.closed = 0
        self.cancelled = 0
        self.concurrent = 0
        self.max_concurrent = 0

    async def start(self) -> None:
        self.start_calls += 1
        if self.start_calls <= self.start_failures:
            raise ConnectionRefusedError("store down")

    async def write(self, items: Sequence[Any]) -> WriteResult:
        self.calls.append(list(items))
        self.call_times.append(time.monotonic())
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.gate is not None:
                await self.gate.wait()
            step = self.script.popleft() if self.script else None
            if isinstance(step, Exception):
                raise step
            return step if step is not None else self.default(list(items))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.concurrent -= 1

    async def close(self) -> None:
        self.closed += 1

    def healthy(self) -> bool:
        return True


def make_runner(sink: FakeSink, bus: Any, subscription: str = SUB, **overrides: Any) -> tuple[SinkRunner, Metrics]:
    settings: dict[str, Any] = {
        "retry_min_backoff": MS,
        "retry_max_backoff": 10 * MS,
        "lease_extend_interval": 5 * MS,
        **overrides,
    }
    metrics = Metrics()
    return SinkRunner(sink, bus, subscription, metrics, RunnerConfig(**settings)), metrics


def value(metrics: Metrics, name: str) -> float:
    v = metrics.registry.get_sample_value(name, {"sink": "fake"})
    return 0.0 if v is None else v


def readings(n: int, device: str = "dev1") -> list[Reading]:
    now = time.time_ns()
    return [Reading("temp", device, {"device_id": device}, {"v": float(i)}, now + i, received_ns=now) for i in range(n)]


async def wait_until(cond: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def running(runner: SinkRunner, drain: timedelta = timedelta(seconds=1)) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        await asyncio.wait_for(runner.stop(drain), 3)
        await asyncio.wait_for(task, 1)


def warnings_of(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


# -- accepted ---------------------------------------------------------------------------


async def test_accepted_batches_are_acked_and_counted() -> None:
    bus, sink = FakeBus(), FakeSink()
    runner, metrics = make_runner(sink, bus)
    ids = bus.add_batch(readings(3)) + bus.add_batch(readings(2))
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 5)
        assert runner.healthy()
        assert value(metrics, "gateway_sink_healthy") == 1
    assert sorted(bus.acked) == ids
    assert value(metrics, "gateway_sink_written_total") == 5
    assert value(metrics, "gateway_sink_batch_size_count") == 2
    assert value(metrics, "gateway_sink_batch_size_sum") == 5
    assert value(metrics, "gateway_sink_write_seconds_count") == 2
    assert value(metrics, "gateway_ingest_to_stored_seconds_count") == 5
    assert value(metrics, "gateway_sink_retried_total") == 0
    assert bus.published == {} and bus.nacked == []
    assert sink.closed == 1 and value(metrics, "gateway_sink_healthy") == 0
    assert runner.name == "fake"


# -- retry --------------------------------------------------------------------------------


async def test_transient_failures_are_retried_in_place_with_leases_extended(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    up = False
    sink = FakeSink(default=lambda items: ok(items) if up else WriteResult.retry_all(len(items), "503 unavailable"))
    bus = FakeBus()
    runner, metrics = make_runner(
        sink, bus, retry_min_backoff=5 * MS, retry_max_backoff=5 * MS, lease_extend_interval=MS
    )
    ids = bus.add_batch(readings(3))
    async with running(runner):
        await wait_until(lambda: len(sink.calls) >= 4)
        assert bus.acked == []
        assert not runner.healthy() and value(metrics, "gateway_sink_healthy") == 0
        assert any(sorted(e) == ids for e in bus.extended)
        up = True
        await wait_until(lambda: len(bus.acked) == 3)
        assert runner.healthy() and value(metrics, "gateway_sink_healthy") == 1
    failed_calls = len(sink.calls) - 1
    assert all(call == sink.calls[0] for call in sink.calls)
    assert sorted(bus.acked) == ids
    assert value(metrics, "gateway_sink_written_total") == 3
    assert value(metrics, "gateway_sink_retried_total") == 3 * failed_calls
    assert value(metrics, "gateway_sink_failed_total") == 0
    assert bus.published == {} and bus.nacked == []
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "503 unavailable" in warnings[0].getMessage()
    assert [r.getMessage() for r in warnings_of(caplog, logging.INFO)] == ["sink fake: recovered"]


async def test_retry_after_is_honoured() -> None:
    sink = FakeSink(script=[WriteResult.retry_all(2, "429 too many requests", retry_after=60 * MS)])
    bus = FakeBus()
    runner, _ = make_runner(sink, bus)
    bus.add_batch([1, 2])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 2)
    assert len(sink.calls) == 2
    assert sink.call_times[1] - sink.call_times[0] >= 0.059


async def test_retry_after_is_at_least_the_minimum_backoff() -> None:
    sink = FakeSink(script=[WriteResult.retry_all(1, "429", retry_after=timedelta(0))])
    bus = FakeBus()
    runner, _ = make_runner(sink, bus, retry_min_backoff=50 * MS, retry_max_backoff=50 * MS)
    bus.add_batch([1])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 1)
    assert sink.call_times[1] - sink.call_times[0] >= 0.049


async def test_exception_in_write_is_retried_and_its_traceback_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = FakeSink(script=[RuntimeError("boom"), RuntimeError("boom")])
    bus = FakeBus()
    runner, metrics = make_runner(sink, bus)
    ids = bus.add_batch(["a", "b"])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 2)
    assert sink.calls == [["a", "b"]] * 3
    assert sorted(bus.acked) == ids
    assert value(metrics, "gateway_sink_retried_total") == 4
    assert value(metrics, "gateway_sink_written_total") == 2
    warnings = warnings_of(caplog)
    assert len(warnings) == 1
    assert "RuntimeError('boom')" in warnings[0].getMessage() and warnings[0].exc_info is not None


# -- split and reject ---------------------------------------------------------------------


async def test_too_large_is_split_down_to_the_one_bad_item() -> None:
    def store(items: list[Any]) -> WriteResult:
        return WriteResult.split_all(len(items), "413 request entity too large") if 5 in items else ok(items)

    sink, bus = FakeSink(default=store), FakeBus()
    runner, metrics = make_runner(sink, bus)
    ids = bus.add_batch(list(range(8)))
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 8)
    assert sink.calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]
    assert sorted(bus.acked) == ids
    assert value(metrics, "gateway_sink_written_total") == 7
    assert value(metrics, "gateway_sink_failed_total") == 1
    assert value(metrics, "gateway_sink_retried_total") == 0
    [letter] = [m.data for m in bus.published["deadletter"]]
    assert isinstance(letter, DeadLetter)
    assert letter.payload == b"5" and "413" in letter.reason and letter.source == "sink:fake"


async def test_rejected_items_are_dead_lettered_with_the_sinks_reason_and_the_rest_acked() -> None:
    reason = "field 'v': not a number"
    sink = FakeSink(script=[WriteResult(accepted=[0, 2, 3], rejected={1: reason})])
    bus = FakeBus()
    runner, metrics = make_runner(sink, bus)
    ids = bus.add_batch(readings(4))
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 4)
    assert len(sink.calls) == 1
    assert sorted(bus.acked) == ids
    assert value(metrics, "gateway_sink_written_total") == 3
    assert value(metrics, "gateway_sink_failed_total") == 1
    [letter] = [m.data for m in bus.published["deadletter"]]
    assert isinstance(letter, DeadLetter)
    assert letter.reason == reason and letter.source == "sink:fake"
    assert letter.topic == "reading/temp/dev1" and b'"v":1.0' in letter.payload and letter.attempts == 1


async def test_without_dead_letter_topic_refusals_are_logged_counted_and_acked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = FakeSink(script=[WriteResult.reject_all(2, "unparseable record")])
    bus = FakeBus()
    runner, metrics = make_runner(sink, bus, dead_letter_topic=None)
    ids = bus.add_batch(["x", "y"])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 2)
    assert sorted(bus.acked) == ids and bus.published == {}
    assert value(metrics, "gateway_sink_failed_total") == 2
    errors = warnings_of(caplog, logging.ERROR)
    assert len(errors) == 1 and "unparseable record" in errors[0].getMessage()


async def test_a_partial_result_settles_each_index_on_its_own() -> None:
    result = WriteResult(accepted=[0], retry=[1], rejected={2: "bad"}, reason="timeout")
    sink, bus = FakeSink(script=[result]), FakeBus()
    runner, metrics = make_runner(sink, bus)
    a, b, c = bus.add_batch(["a", "b", "c"])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 3)
    assert sink.calls == [["a", "b", "c"], ["b"]]
    assert bus.acked == [a, c, b]
    assert value(metrics, "gateway_sink_retried_total") == 1
    assert [m.data.reason for m in bus.published["deadletter"]] == ["bad"]


async def test_items_the_sink_did_not_report_are_retried(caplog: pytest.LogCaptureFixture) -> None:
    sink, bus = FakeSink(script=[WriteResult(accepted=[0, 7])]), FakeBus()
    runner, _ = make_runner(sink, bus)
    ids = bus.add_batch(["a", "b"])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 2)
    assert sink.calls == [["a", "b"], ["b"]]
    assert bus.acked == ids
    assert len(warnings_of(caplog, logging.ERROR)) == 1


# -- concurrency and ordering -------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_in_flight_limit_is_never_exceeded(limit: int) -> None:
    sink, bus = FakeSink(delay=0.01), FakeBus()
    runner, _ = make_runner(sink, bus, max_in_flight=limit)
    batches = [[f"{b}.{i}" for i in range(3)] for b in range(6)]
    for batch in batches:
        bus.add_batch(batch)
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 18)
    assert sink.max_concurrent == limit
    assert sink.calls == batches  # writes start in pull order


async def test_with_one_in_flight_the_next_batch_waits_until_the_previous_is_settled() -> None:
    sink, bus = FakeSink(script=[WriteResult.retry_all(1, "503")]), FakeBus()
    sink.gate = asyncio.Event()
    runner, _ = make_runner(sink, bus, max_in_flight=1)
    first, second = bus.add_batch(["first"]), bus.add_batch(["second"])
    async with running(runner):
        await wait_until(lambda: len(sink.calls) == 1)
        await asyncio.sleep(0.02)
        assert bus.pulls == 1 and len(sink.calls) == 1
        sink.gate.set()
        await wait_until(lambda: len(bus.acked) == 2)
    assert sink.calls == [["first"], ["first"], ["second"]]
    assert bus.acked == first + second


# -- lifecycle ----------------------------------------------------------------------------


async def test_stop_lets_an_in_flight_write_finish_and_pulls_nothing_more() -> None:
    sink, bus = FakeSink(), FakeBus()
    sink.gate = asyncio.Event()
    runner, _ = make_runner(sink, bus)
    ids = bus.add_batch(["a"])
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: len(sink.calls) == 1)
    stopping = asyncio.create_task(runner.stop(timedelta(seconds=2)))
    await asyncio.sleep(0.02)
    bus.add_batch(["late"])
    assert not stopping.done() and not task.done()
    sink.gate.set()
    await asyncio.wait_for(stopping, 1)
    assert task.done() and task.exception() is None
    assert bus.acked == ids and sink.calls == [["a"]] and sink.closed == 1


async def test_stop_keeps_retrying_in_flight_writes_until_the_timeout() -> None:
    up = False
    sink = FakeSink(default=lambda items: ok(items) if up else WriteResult.retry_all(len(items), "503"))
    bus = FakeBus()
    runner, _ = make_runner(sink, bus)
    ids = bus.add_batch(["a"])
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: len(sink.calls) >= 2)
    stopping = asyncio.create_task(runner.stop(timedelta(seconds=2)))
    await asyncio.sleep(0.03)
    assert not stopping.done()
    up = True
    await asyncio.wait_for(stopping, 1)
    await task
    assert bus.acked == ids


async def test_stop_cancels_a_write_that_hangs_past_the_timeout_and_leaves_it_unacked() -> None:
    sink, bus = FakeSink(), FakeBus()
    sink.gate = asyncio.Event()
    runner, _ = make_runner(sink, bus)
    bus.add_batch(["a", "b"])
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: len(sink.calls) == 1)
    started = time.monotonic()
    await asyncio.wait_for(runner.stop(timedelta(milliseconds=30)), 1)
    assert 0.025 <= time.monotonic() - started < 0.5
    assert task.done() and task.exception() is None
    assert sink.cancelled == 1 and sink.closed == 1
    assert bus.acked == [] and bus.nacked == []


async def test_start_failures_are_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink, bus = FakeSink(start_failures=3), FakeBus()
    runner, _ = make_runner(sink, bus)
    ids = bus.add_batch(["a"])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 1)
    assert sink.start_calls == 4 and bus.acked == ids
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "store down" in warnings[0].getMessage()
    assert "started after 3 failed attempts" in warnings_of(caplog, logging.INFO)[0].getMessage()


async def test_stop_while_start_keeps_failing_does_not_close_the_sink() -> None:
    sink, bus = FakeSink(start_failures=10**6), FakeBus()
    runner, metrics = make_runner(sink, bus)
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: sink.start_calls >= 2)
    assert not runner.healthy() and value(metrics, "gateway_sink_healthy") == 0
    await asyncio.wait_for(runner.stop(timedelta(seconds=1)), 1)
    assert task.done() and task.exception() is None
    assert sink.closed == 0 and sink.calls == [] and bus.pulls == 0


async def test_stop_before_run_is_safe_and_idempotent() -> None:
    sink, bus = FakeSink(), FakeBus()
    runner, _ = make_runner(sink, bus)
    await runner.stop(timedelta(seconds=1))
    await runner.stop(timedelta(seconds=1))
    await asyncio.wait_for(runner.run(), 1)
    assert sink.start_calls == 0 and sink.closed == 0
    with pytest.raises(RuntimeError):
        await runner.run()
    await runner.stop(timedelta(seconds=1))


async def test_bus_closed_ends_run_after_in_flight_writes_finish() -> None:
    sink, bus = FakeSink(), FakeBus()
    sink.gate = asyncio.Event()
    runner, _ = make_runner(sink, bus)
    ids = bus.add_batch(["a"])
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: len(sink.calls) == 1)
    await bus.close()
    await asyncio.sleep(0.02)
    assert not task.done()
    sink.gate.set()
    await asyncio.wait_for(task, 1)
    assert bus.acked == ids and sink.closed == 1
    await runner.stop(timedelta(seconds=1))


async def test_bus_closed_while_dead_lettering_leaves_the_items_unacked() -> None:
    sink, bus = FakeSink(script=[WriteResult.reject_all(1, "bad")]), FakeBus()
    bus.closed = True  # publish raises BusClosed; the queued batch is still pulled first
    runner, _ = make_runner(sink, bus)
    bus.add_batch(["a"])
    await asyncio.wait_for(runner.run(), 1)
    assert bus.acked == [] and sink.closed == 1


# -- config -------------------------------------------------------------------------------


def test_runner_config_defaults_and_validation() -> None:
    cfg = RunnerConfig.model_validate({})
    assert cfg.lease_extend_interval == timedelta(seconds=5)
    assert cfg.max_in_flight == 2 and cfg.dead_letter_topic == "deadletter"
    assert cfg.retry_min_backoff == timedelta(milliseconds=200) and cfg.retry_max_backoff == timedelta(seconds=30)
    assert RunnerConfig.model_validate({"retry_min_backoff": "PT0.5S"}).retry_min_backoff == timedelta(seconds=0.5)
    for bad in ({"max_retry_rate": 1}, {"max_in_flight": 0}, {"retry_min_backoff": 0}, {"retry_max_backoff": 0.1}):
        with pytest.raises(ValidationError):
            RunnerConfig.model_validate(bad)


# -- with the real memory bus ---------------------------------------------------------------


def memory_bus(name: str, **sub: Any) -> MemoryBus:
    bus = MemoryBus(metrics=None)
    bus.create_topic(name)
    bus.create_topic(f"{name}-dlq")
    dlq = {"name": f"{name}-dlq", "topic": f"{name}-dlq", "dead_letter_topic": None, "batch": {"max_latency": MS}}
    bus.create_subscription(
        SubscriptionConfig.model_validate({"name": name, "topic": name, "dead_letter_topic": f"{name}-dlq", **sub})
    )
    bus.create_subscription(SubscriptionConfig.model_validate(dlq))
    return bus


async def publish(bus: MemoryBus, topic: str, items: list[Reading]) -> None:
    await bus.publish(topic, [OutgoingMessage(r, 100, r.device_id) for r in items])


async def test_memory_bus_rejected_item_reaches_the_dead_letter_subscription() -> None:
    name = "runner-mem-reject"
    bus = memory_bus(name, batch={"max_messages": 10, "max_latency": 5 * MS})
    items = readings(10)
    bad = items[4]

    def store(batch: list[Any]) -> WriteResult:
        return WriteResult(
            accepted=[i for i, r in enumerate(batch) if r is not bad],
            rejected={i: "out of range" for i, r in enumerate(batch) if r is bad},
        )

    sink = FakeSink(default=store)
    runner, metrics = make_runner(sink, bus, subscription=name, dead_letter_topic=f"{name}-dlq")
    await publish(bus, name, items)
    async with running(runner):
        await wait_until(lambda: bus.stats(name).acked == 10)
    assert bus.stats(name).backlog == 0
    [letter] = [m.data for m in await asyncio.wait_for(bus.pull(f"{name}-dlq"), 1)]
    assert letter.reason == "out of range" and letter.source == "sink:fake"
    assert value(metrics, "gateway_sink_written_total") == 9
    await bus.close()


async def test_memory_bus_holds_leases_while_retrying_past_the_ack_deadline() -> None:
    name = "runner-mem-lease"
    bus = memory_bus(name, ack_deadline=40 * MS, max_delivery_attempts=1, batch={"max_latency": 5 * MS})
    up = False
    sink = FakeSink(default=lambda items: ok(items) if up else WriteResult.retry_all(len(items), "503"))
    runner, metrics = make_runner(sink, bus, subscription=name, retry_max_backoff=5 * MS, lease_extend_interval=10 * MS)
    await publish(bus, name, readings(5))
    async with running(runner):
        await asyncio.sleep(0.2)  # five ack deadlines
        assert bus.stats(name).expired == 0 and bus.stats(name).acked == 0
        up = True
        await wait_until(lambda: bus.stats(name).acked == 5)
    stats = bus.stats(name)
    assert stats.expired == 0 and stats.dead_lettered == 0 and stats.delivered == 5 and stats.backlog == 0
    assert value(metrics, "gateway_sink_written_total") == 5
    await bus.close()


async def test_memory_bus_redelivers_what_a_cancelled_drain_left_unacked() -> None:
    name = "runner-mem-drain"
    bus = memory_bus(name, ack_deadline=30 * MS, batch={"max_latency": 5 * MS})
    hung = FakeSink()
    hung.gate = asyncio.Event()
    first, _ = make_runner(hung, bus, subscription=name)
    await publish(bus, name, readings(3))
    task = asyncio.create_task(first.run())
    await wait_until(lambda: len(hung.calls) == 1)
    await asyncio.wait_for(first.stop(timedelta(milliseconds=10)), 1)
    await task
    assert bus.stats(name).acked == 0 and bus.stats(name).backlog == 3
    second_sink = FakeSink()
    second, _ = make_runner(second_sink, bus, subscription=name)
    async with running(second):
        await wait_until(lambda: bus.stats(name).acked == 3)
    assert sorted(r.fields["v"] for call in second_sink.calls for r in call) == [0.0, 1.0, 2.0]
    await bus.close()


# -- max_retries (forwarders give up) and the stored watermark --------------------------


async def test_max_retries_dead_letters_with_the_last_reason_after_that_many_retries() -> None:
    sink = FakeSink(default=lambda items: WriteResult.retry_all(len(items), "HTTP 500 from receiver"))
    bus = FakeBus()
    runner, metrics = make_runner(sink, bus, max_retries=2)
    ids = bus.add_batch(readings(3))
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 3)
    assert len(sink.calls) == 3  # the first write and two retries
    assert sorted(bus.acked) == ids
    letters = [m.data for m in bus.published["deadletter"]]
    assert len(letters) == 3
    assert all(d.reason == "gave up after 2 retries: HTTP 500 from receiver" for d in letters)
    assert value(metrics, "gateway_sink_retried_total") == 6
    assert value(metrics, "gateway_sink_failed_total") == 3


async def test_max_retries_does_not_give_up_when_a_retry_succeeds() -> None:
    sink = FakeSink(script=[WriteResult.retry_all(2, "down"), WriteResult.retry_all(2, "down")])
    bus = FakeBus()
    runner, metrics = make_runner(sink, bus, max_retries=2)
    bus.add_batch(readings(2))
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 2)
    assert len(sink.calls) == 3
    assert "deadletter" not in bus.published
    assert value(metrics, "gateway_sink_written_total") == 2


async def test_without_max_retries_a_failing_sink_is_retried_past_any_count() -> None:
    sink = FakeSink(script=[WriteResult.retry_all(1, "down")] * 12)
    bus = FakeBus()
    runner, _ = make_runner(sink, bus)
    bus.add_batch(readings(1))
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 1)
    assert len(sink.calls) == 13 and "deadletter" not in bus.published


def test_max_retries_must_be_positive_or_null() -> None:
    assert RunnerConfig().max_retries is None
    assert RunnerConfig(max_retries=3).max_retries == 3
    with pytest.raises(ValidationError):
        RunnerConfig(max_retries=0)


def reading_at(received_ns: int) -> Reading:
    return Reading("temp", "dev1", {"device_id": "dev1"}, {"v": 1.0}, received_ns, received_ns=received_ns)


async def test_stored_watermark_stays_below_the_oldest_held_reading_until_it_is_stored() -> None:
    sink = FakeSink()
    sink.gate = asyncio.Event()
    bus = FakeBus()
    runner, _ = make_runner(sink, bus, max_in_flight=1)
    assert runner.stored_watermark() == 0
    bus.add_batch([reading_at(100), reading_at(200)])
    async with running(runner):
        await wait_until(lambda: len(sink.calls) == 1)
        assert runner.stored_watermark() == 99  # pulled, not yet stored
        sink.gate.set()
        await wait_until(lambda: len(bus.acked) == 2)
        assert runner.stored_watermark() == 200
        sink.gate.clear()
        bus.add_batch([reading_at(300)])
        await wait_until(lambda: len(sink.calls) == 2)
        assert runner.stored_watermark() == 299  # everything before 300 is stored; 300 is not
        sink.gate.set()
        await wait_until(lambda: len(bus.acked) == 3)
    assert runner.stored_watermark() == 300


async def test_stored_watermark_waits_for_a_retried_reading() -> None:
    sink = FakeSink(script=[WriteResult(accepted=[1], retry=[0], reason="down")] + [WriteResult.retry_all(1, "x")] * 3)
    bus = FakeBus()
    runner, _ = make_runner(sink, bus, retry_min_backoff=20 * MS, retry_max_backoff=20 * MS)
    bus.add_batch([reading_at(100), reading_at(200)])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 1)
        assert runner.stored_watermark() == 99
        await wait_until(lambda: len(bus.acked) == 2)
        assert runner.stored_watermark() == 200
