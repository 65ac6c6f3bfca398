"""Processor state across restarts: the alert state file (firing alerts, absence last-seen
times) and the change detector's (state-field baselines, held-back invalidations)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.core.message import Reading
from gateway.core.metrics import Metrics
from gateway.processors.alert_engine import AlertEngine
from gateway.processors.alert_state import AlertState, Seen, load_state, read_state, write_state
from gateway.processors.config import AlertsConfig, InvalidationConfig
from gateway.processors.detector_state import (
    DetectorState,
    PendingChange,
    load_detector_state,
    write_detector_state,
)
from gateway.processors.events import AlertEvent, Invalidation
from gateway.processors.invalidation import ChangeDetector

S = 1_000_000_000
T0 = 1_800_000_000 * S
HOT = {"type": "threshold", "field": "temperature", "op": ">", "value": 30, "clear": 28}
SILENT = {"type": "absence", "after": "30s"}


def engine(tmp_path: Path, **rules: dict[str, Any]) -> tuple[AlertEngine, Metrics]:
    metrics = Metrics()
    cfg = AlertsConfig.model_validate({"subscription": "a", "state_interval": "5s", "rules": rules})
    return AlertEngine(cfg, tmp_path / "alerts.json", metrics), metrics


def reading(t_s: float, value: float, device: str = "d1") -> Reading:
    t = T0 + int(t_s * S)
    return Reading("env", device, {"device_id": device}, {"temperature": value}, t, received_ns=t)


async def feed(e: AlertEngine, *rs: Reading) -> list[AlertEvent]:
    return [m.data for m in await e.process(list(rs))]


def test_alert_state_round_trips_and_a_corrupt_file_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "alerts.json"
    assert load_state(path) == AlertState()  # no file yet
    ev = AlertEvent("id1", "hot", "firing", "d1", "warning", "hot!", {"team": "x"}, {"site": "lab"}, 31.0, 5, 6)
    state = AlertState([ev], {"silent": ("fp", {"d1": Seen(123, {"site": "lab"})})})
    write_state(path, state)
    assert load_state(path) == state and read_state(path) == [ev]
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, then renamed
    path.write_bytes(b'{"firing": [{"rule": "no alert_id"}]}')
    with pytest.raises(ValueError, match="not readable"):
        read_state(path)  # the CLI says so
    with caplog.at_level(logging.ERROR):
        assert load_state(path) == AlertState()  # the engine starts without it
    assert "unreadable, ignored" in caplog.text
    assert not path.exists() and (tmp_path / "alerts.json.corrupt").exists()
    path.write_bytes(b"\x00garbage")
    assert load_state(path) == AlertState()


async def test_a_firing_alert_is_resolved_not_refired_after_a_restart(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, hot=HOT)
    await e.start()
    [fired] = await feed(e, reading(0, 40))
    await e.close()
    again, metrics = engine(tmp_path, hot=HOT)
    await again.start()
    assert [a.alert_id for a in again.firing()] == [fired.alert_id]
    assert await feed(again, reading(1, 45), reading(2, 29)) == []  # still firing (29: hysteresis band)
    [resolved] = await feed(again, reading(3, 20))
    assert (resolved.status, resolved.alert_id, resolved.started_ns) == ("resolved", fired.alert_id, fired.started_ns)
    assert metrics.registry.get_sample_value("gateway_alerts_fired_total", {"rule": "hot"}) is None
    assert metrics.registry.get_sample_value("gateway_alerts_resolved_total", {"rule": "hot"}) == 1


async def test_a_device_silent_across_a_restart_is_reported_offline(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, silent=SILENT)
    await e.start()
    await feed(e, reading(0, 20, "d1"), reading(10, 20, "d2"))
    await e.close()  # saved at stop
    again, _ = engine(tmp_path, silent=SILENT)
    await again.start()
    assert [m.data.device_id for m in await again.tick(T0 + 35 * S)] == ["d1"]  # 35 s silent
    offline = [m.data.device_id for m in await again.tick(T0 + 41 * S)]
    assert offline == ["d2"]  # d1 fired once already, d2 now
    # a changed absence rule starts afresh: its last-seen times are not restored
    await again.close()
    changed, _ = engine(tmp_path, silent={**SILENT, "after": "1m"})
    await changed.start()
    assert [m.data.device_id for m in await changed.tick(T0 + 3600 * S)] == []
    assert {a.device_id for a in changed.firing()} == {"d1", "d2"}  # firing alerts are kept, though


async def test_last_seen_times_are_saved_periodically(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, silent=SILENT)
    await e.start()
    await feed(e, reading(0, 20))
    await e.tick(e._saved_ns + 1 * S)  # within state_interval (5 s): not yet
    assert not (tmp_path / "alerts.json").exists()
    await e.tick(e._saved_ns + 6 * S)
    doc = orjson.loads((tmp_path / "alerts.json").read_bytes())
    assert doc["last_seen"]["silent"]["devices"]["d1"]["ns"] == T0


def detector(tmp_path: Path, watermark: Any = None) -> ChangeDetector:
    cfg = InvalidationConfig.model_validate(
        {"subscription": "c", "state_fields": ["firmware"], "window": "1h", "after_sink": "store"}
    )
    return ChangeDetector(cfg, tmp_path, Metrics(), watermark)


def fw(device: str, version: str, received_ns: int) -> Reading:
    return Reading("env", device, {"device_id": device}, {"firmware": version}, received_ns, received_ns)


def test_detector_state_round_trips_and_a_corrupt_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "invalidation-state.json"
    state = DetectorState({"d1": {"firmware": "1.0", "n": 3}}, [PendingChange("d1", ["telemetry"], ["fw"], 2, 9)])
    write_detector_state(path, state)
    assert load_detector_state(path) == state
    path.write_bytes(b'{"baselines": {"d1": {"firmware": [1]}}}')
    assert load_detector_state(path) == DetectorState()
    assert (tmp_path / "invalidation-state.json.corrupt").exists()


async def test_a_firmware_change_while_down_is_detected_and_held_back_events_survive(tmp_path: Path) -> None:
    mark = 0
    d = detector(tmp_path, lambda: mark)
    await d.start()
    await d.process([fw("d1", "1.0", 100), fw("d2", "7", 100)])
    await d.process([fw("d2", "8", 200)])  # a change whose reading the store has not stored
    assert d.flush_pending(store_settled=True) == []  # held back: watermark 0 < 200
    await d.close()
    mark = 10**6
    again = detector(tmp_path, lambda: mark)
    await again.start()
    [held] = [m.data for m in again.flush_pending(store_settled=True)]  # sent after the restart
    assert isinstance(held, Invalidation) and held.ids == ("d2",) and held.received_ns == 200
    await again.process([fw("d1", "2.0", 300)])  # changed while the gateway was down
    [changed] = [m.data for m in again.flush_pending(store_settled=True)]
    assert changed.ids == ("d1",) and changed.fields == ("firmware",)
    await again.close()
