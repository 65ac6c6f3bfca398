"""The replay-rate limit: `TokenBucket`, and `runner.max_rate` pacing every write of a SinkRunner."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from gateway.core.rate_limit import TokenBucket
from gateway.core.runner_config import RunnerConfig
from gateway.core.sink import WriteResult
from tests.unit.test_sink_runner import FakeBus, FakeSink, make_runner, readings, running, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_then_paces_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    assert bucket.burst == 100
    assert bucket.reserve(60) == 0
    assert bucket.reserve(40) == 0
    assert bucket.reserve(50) == pytest.approx(0.5)  # 50 tokens at 100/s
    clock.now += 0.5
    assert bucket.reserve(10) == pytest.approx(0.1)  # the debt was paid; 10 more take 0.1 s


def test_bucket_goes_into_debt_so_concurrent_reservations_queue_up() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=10, clock=clock)
    assert bucket.reserve(30) == pytest.approx(2.0)  # larger than the burst: sent after it is earned
    assert bucket.reserve(10) == pytest.approx(3.0)  # behind the first one
    clock.now += 3.0
    assert bucket.reserve(0) == 0


def test_bucket_never_holds_more_than_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=5, clock=clock)
    clock.now += 3600
    assert bucket.reserve(5) == 0
    assert bucket.reserve(5) == pytest.approx(0.5)


def test_bucket_rejects_a_rate_that_is_not_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValidationError):
        RunnerConfig(max_rate=0)
    assert RunnerConfig().max_rate is None
    assert RunnerConfig(max_rate=2.5).max_rate == 2.5


async def _send(max_rate: float | None, batches: int, size: int) -> tuple[FakeSink, float]:
    bus, sink = FakeBus(), FakeSink()
    runner, _ = make_runner(sink, bus, max_rate=max_rate, max_in_flight=2)
    for _ in range(batches):
        bus.add_batch(readings(size))
    started = time.monotonic()
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == batches * size, within=10)
    return sink, started


async def test_max_rate_paces_a_backlog_to_the_rate_plus_one_burst() -> None:
    rate = 400.0
    sink, started = await _send(rate, batches=10, size=100)
    elapsed = sink.call_times[-1] - started
    assert elapsed >= (1000 - rate) / rate * 0.95  # 1000 items, the first 400 at once: 1.5 s
    assert elapsed < 3.0
    sent = 0
    for call, at in zip(sink.calls, sink.call_times, strict=True):
        sent += len(call)
        assert sent <= rate + rate * (at - started) + 1, "more than the burst plus the rate was sent"


async def test_without_max_rate_the_same_backlog_goes_at_once() -> None:
    sink, started = await _send(None, batches=10, size=100)
    assert sink.call_times[-1] - started < 0.5


async def test_retries_are_paced_too() -> None:
    bus = FakeBus()
    sink = FakeSink(script=[WriteResult.retry_all(50, "503")] * 3)
    runner, _ = make_runner(sink, bus, max_rate=100.0)
    bus.add_batch(readings(50))
    started = time.monotonic()
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 50, within=5)
    # 4 writes of 50 items at 100/s with a burst of 100: the 3rd and 4th wait 0.5 s each
    assert len(sink.calls) == 4
    assert sink.call_times[-1] - started >= 0.95
