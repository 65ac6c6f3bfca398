"""Change detector and coalescer; ProcessorSink (acks after publish, tick under one lock); admin routes."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.bus.memory import MemoryBus
from gateway.core.bus import OutgoingMessage, SubscriptionConfig
from gateway.core.message import RawMessage, Reading
from gateway.core.metrics import Metrics
from gateway.core.processor import ProcessorSink
from gateway.processors.admin_routes import processor_routes
from gateway.processors.build import Processors
from gateway.processors.config import InvalidationConfig
from gateway.processors.detector_state import load_detector_state
from gateway.processors.events import Invalidation
from gateway.processors.invalidation import ChangeDetector, Coalescer
from gateway.processors.meta_topics import MetaTopics, handle_meta_message


def detector(tmp_path: Path, watermark: Any = None, **cfg: Any) -> ChangeDetector:
    config = InvalidationConfig.model_validate({"window": "50ms", **cfg})
    return ChangeDetector(config, tmp_path, Metrics(), watermark)


def reading(device: str, firmware: str, received_ns: int) -> Reading:
    return Reading("env", device, {"device_id": device}, {"firmware": firmware, "t": 1.0}, received_ns, received_ns)


def test_ten_quick_changes_of_one_id_become_one_event() -> None:
    c = Coalescer("device", timedelta(milliseconds=100))
    for i in range(10):
        c.add("d1", "meta", [f"k{i}"], 0, 1000.0 + i * 0.005)
    c.add("d2", "admin", ["x"], 0, 1000.02)
    assert c.due(1000.09, None) == []  # the window is still open
    [one] = c.due(1000.1, None)
    assert (one.ids, one.changes, one.sources) == (("d1",), 10, ("meta",))
    assert len(one.fields) == 10
    [two] = c.due(1000.2, None)
    assert two.ids == ("d2",) and c.due(1000.3, None) == []


def test_a_telemetry_change_waits_for_the_store_watermark() -> None:
    c = Coalescer("device", timedelta(milliseconds=10))
    c.add("d1", "telemetry", ["firmware"], 500, 0.0)
    assert c.due(1.0, 499) == []
    [ev] = c.due(1.0, 500)
    assert ev.received_ns == 500 and ev.fields == ("firmware",)


async def test_state_field_changes_are_detected_after_the_first_value(tmp_path: Path) -> None:
    mark = 0
    d = detector(tmp_path, lambda: mark, subscription="cache", state_fields=["firmware"], after_sink="store")
    assert await d.process([reading("d1", "1.0", 100), reading("d1", "1.0", 200), reading("d2", "2.0", 300)]) == []
    assert len(d.coalescer) == 0  # first values are the baseline
    await d.process([reading("d1", "1.1", 400)])
    await asyncio.sleep(0.06)
    assert await d.tick(time.time_ns()) == []  # the store has not stored the reading yet
    mark = 400
    [msg] = await d.tick(time.time_ns())
    assert isinstance(msg.data, Invalidation) and msg.data.ids == ("d1",) and msg.data.sources == ("telemetry",)


async def test_metadata_is_stored_before_the_change_is_recorded_and_repeats_are_no_change(tmp_path: Path) -> None:
    d = detector(tmp_path, meta_topics=["devices/{device_id}/meta"])
    assert await d.record_meta("d1", {"location": "roof"}, "admin") is True
    assert await d.store.get("d1") == {"location": "roof"}
    assert await d.record_meta("d1", {"location": "roof"}, "meta") is False
    assert len(d.coalescer) == 1
    raw = RawMessage("devices/d1/meta", b"[1, 2]")
    meta = MetaTopics(["devices/{device_id}/meta"])
    assert meta.device_of(raw.topic) == "d1" and meta.device_of("devices/d1/telemetry") is None
    letter = await handle_meta_message(d, raw, "d1")
    assert letter is not None and letter.code == "bad_metadata" and "JSON object" in letter.reason
    await d.close()


async def test_admin_routes_put_and_get_device_metadata(tmp_path: Path) -> None:
    d = detector(tmp_path)
    hook = processor_routes(None, d)
    status, body, _ = await hook("PUT", "/devices/dev%201/meta", b'{"fw": "2"}')  # type: ignore[misc]
    assert status == 200 and orjson.loads(body) == {"device_id": "dev 1", "changed": True}
    assert (await hook("GET", "/devices/dev%201/meta", b""))[:2] == (200, b'{"fw":"2"}')  # type: ignore[index]
    assert (await hook("PUT", "/devices/x/meta", b"nope"))[0] == 400  # type: ignore[index]
    assert (await hook("GET", "/alerts", b""))[0] == 404  # type: ignore[index]
    assert await hook("GET", "/other", b"") is None
    await d.close()


class _Recorder:
    name = "rec"
    output_topic = "out"
    tick_interval: timedelta | None = timedelta(milliseconds=5)

    def __init__(self) -> None:
        self.ticks = 0
        self.ticked = asyncio.Event()

    async def start(self) -> None:
        pass

    async def process(self, items: Any) -> list[OutgoingMessage]:
        return [OutgoingMessage(("p", x), 1) for x in items]

    async def tick(self, now_ns: int) -> list[OutgoingMessage]:
        self.ticks += 1
        if self.ticks >= 2:
            self.ticked.set()
        return [OutgoingMessage(("t", self.ticks), 1)] if self.ticks == 1 else []

    async def close(self) -> None:
        pass


async def test_processor_sink_publishes_before_accepting_and_ticks() -> None:
    bus = MemoryBus()
    bus.create_topic("out")
    bus.create_subscription(SubscriptionConfig(name="o", topic="out"))
    proc = _Recorder()
    sink = ProcessorSink(proc, bus)
    await sink.start()
    result = await sink.write([1, 2])
    assert result.accepted == [0, 1] and bus.stats("o").backlog == 2  # held by the bus when accepted
    await asyncio.wait_for(proc.ticked.wait(), 2)
    await sink.close()
    got = [m.data for m in await bus.pull("o")]
    assert got[:2] == [("p", 1), ("p", 2)] and ("t", 1) in got


async def test_pending_invalidations_are_flushed_at_stop_without_waiting_for_the_window(tmp_path: Path) -> None:
    bus = MemoryBus()
    bus.create_topic("invalidations")
    bus.create_subscription(SubscriptionConfig(name="inv", topic="invalidations"))
    d = detector(tmp_path, lambda: 150, subscription="c", state_fields=["firmware"], after_sink="store", window="1h")
    await d.start()
    await d.record_meta("m1", {"a": 1}, "admin")
    await d.process(
        [reading("t1", "1", 100), reading("t1", "2", 120), reading("t2", "1", 100), reading("t2", "2", 200)]
    )
    assert await d.tick(time.time_ns()) == []  # the window is open
    # the store did not settle all it was given: only the metadata change (stored already) goes
    assert [m.data.ids for m in d.flush_pending(store_settled=False)] == [("m1",)]
    await Processors(detector=d).flush(bus)  # no after_sink runner: settled, its watermark (150) decides
    assert [m.data.ids for m in await bus.pull("inv")] == [("t1",)]
    assert [p.id for p in load_detector_state(d.state_path).pending] == ["t2"]  # held back, kept for the next start
    await d.close()


@pytest.mark.parametrize("cfg", [{"state_fields": ["fw"]}, {"meta_topics": ["devices/meta"]}, {"window": "0s"}])
def test_bad_invalidation_config_is_refused(cfg: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        InvalidationConfig.model_validate(cfg)
