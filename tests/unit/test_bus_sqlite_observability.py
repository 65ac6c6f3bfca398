"""What the SQLite bus exposes for operators: disk-bound metrics while they matter, torn WAL warnings."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.core.metrics import Metrics
from tests.unit.test_bus_sqlite import msgs, opened, sub


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_blocked_time_is_counted_while_the_publisher_is_still_waiting(tmp_path: Path) -> None:
    metrics = Metrics()
    bus = await opened(tmp_path, sub("b", "t"), metrics=metrics, max_bytes=1000, full_policy="block")
    await bus.publish("t", msgs(*("z" * 300 for _ in range(4))))
    blocked = asyncio.create_task(bus.publish("t", msgs("z" * 300)))
    await asyncio.sleep(1.3)
    assert not blocked.done()
    assert sample(metrics, "gateway_publish_blocked_seconds_total", {"topic": "t"}) >= 0.9  # not only once it ends
    blocked.cancel()
    await bus.close()


async def test_drops_and_stored_bytes_are_exported(tmp_path: Path) -> None:
    metrics = Metrics()
    bus = await opened(tmp_path, sub("o", "t"), metrics=metrics, max_bytes=2000, full_policy="drop_oldest")
    for _ in range(10):
        await bus.publish("t", msgs("z" * 300))
    bus.refresh_metrics()
    stats = bus.storage_stats()
    assert stats.dropped_oldest > 0
    assert sample(metrics, "gateway_bus_dropped_oldest_total") == stats.dropped_oldest
    assert sample(metrics, "gateway_bus_unacked_bytes") == stats.unacked_bytes <= 2000
    assert sample(metrics, "gateway_bus_stored_bytes") == stats.stored_bytes > 0
    assert sample(metrics, "gateway_bus_stored_messages") == stats.stored_messages
    assert sample(metrics, "gateway_subscription_backlog", {"subscription": "o"}) + stats.dropped_oldest == 10
    await bus.close()


async def test_a_wal_ending_in_a_partial_frame_is_reported_and_earlier_commits_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await opened(tmp_path, sub("w", "t"))
    await bus.publish("t", msgs("a", "b"))
    await bus.close()
    wal = tmp_path / "bus.db-wal"
    if not wal.exists() or wal.stat().st_size == 0:  # checkpointed at close: start a log of our own
        wal.write_bytes(b"\x37\x7f\x06\x82" + (3007000).to_bytes(4, "big") + (16384).to_bytes(4, "big") + bytes(20))
    with wal.open("ab") as f:
        f.write(b"\x00" * 1000)  # part of a frame: the crash came in the middle of its write
    caplog.set_level(logging.WARNING, logger="gateway.bus.sqlite")
    bus = await opened(tmp_path, sub("w", "t"))
    assert any("ends in a partial frame" in r.getMessage() for r in caplog.records)
    assert bus.stats("w").backlog == 2
    assert not bus.recovery_report or not bus.recovery_report.corrupt
    await bus.close()


async def test_a_whole_wal_is_not_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bus = await opened(tmp_path, sub("w", "t"))
    await bus.publish("t", msgs("a"))
    await bus.close()
    caplog.set_level(logging.WARNING, logger="gateway.bus.sqlite")
    bus = await opened(tmp_path, sub("w", "t"))
    assert not any("partial frame" in r.getMessage() for r in caplog.records)
    await bus.close()
