"""AlertEngine: firing/resolving, `for:` and hysteresis against flapping, rate, absence, state file, reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.core.message import Reading
from gateway.core.metrics import Metrics
from gateway.processors.alert_engine import AlertEngine, alert_id
from gateway.processors.alert_state import read_state
from gateway.processors.config import AlertsConfig
from gateway.processors.events import AlertEvent

S = 1_000_000_000
T0 = 1_800_000_000 * S


def engine(tmp_path: Path, **rules: dict[str, Any]) -> tuple[AlertEngine, Metrics]:
    metrics = Metrics()
    cfg = AlertsConfig.model_validate({"subscription": "alerts", "rules": rules})
    return AlertEngine(cfg, tmp_path / "alerts.json", metrics), metrics


def reading(t_s: float, value: float, device: str = "d1", site: str = "lab") -> Reading:
    t = T0 + int(t_s * S)
    return Reading("env", device, {"device_id": device, "site": site}, {"temperature": value}, t, received_ns=t)


async def feed(e: AlertEngine, *rs: Reading) -> list[AlertEvent]:
    return [m.data for m in await e.process(list(rs))]


def statuses(events: list[AlertEvent]) -> list[str]:
    return [e.status for e in events]


HOT = {"type": "threshold", "field": "temperature", "op": ">", "value": 30, "clear": 28}


async def test_threshold_fires_once_and_resolves_with_a_stable_id(tmp_path: Path) -> None:
    e, metrics = engine(tmp_path, hot=HOT)
    await e.start()
    fired = await feed(e, reading(0, 25), reading(1, 31), reading(2, 35), reading(3, 33))
    assert statuses(fired) == ["firing"]  # no re-fire while firing
    assert fired[0].alert_id == alert_id("hot", "d1") and fired[0].value == 31
    assert fired[0].summary == "hot: d1 temperature=31 (threshold > 30)"
    assert [a.alert_id for a in e.firing()] == [fired[0].alert_id]
    resolved = await feed(e, reading(4, 27))
    assert statuses(resolved) == ["resolved"] and resolved[0].alert_id == fired[0].alert_id
    assert resolved[0].started_ns == fired[0].started_ns and e.firing() == []
    assert metrics.registry.get_sample_value("gateway_alerts_fired_total", {"rule": "hot"}) == 1
    assert metrics.registry.get_sample_value("gateway_alerts_resolved_total", {"rule": "hot"}) == 1
    assert metrics.registry.get_sample_value("gateway_alert_evaluations_total", {"rule": "hot"}) == 5
    assert metrics.registry.get_sample_value("gateway_alert_latency_seconds_count", {"rule": "hot"}) == 2


async def test_hysteresis_keeps_a_flapping_value_from_resolving_and_refiring(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, hot=HOT)
    await e.start()
    values = [31, 29, 30.5, 28.5, 31, 29.9, 32]  # hovers around 30, never at or below 28
    events = await feed(e, *(reading(i, v) for i, v in enumerate(values)))
    assert statuses(events) == ["firing"]


async def test_for_duration_suppresses_short_breaches(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, hot={**HOT, "for": "10s"})
    await e.start()
    # a spike of 5 s, then back to normal: never fires
    assert await feed(e, reading(0, 31), reading(5, 32), reading(6, 20)) == []
    # a breach that holds for 10 s fires at the reading that completes it
    events = await feed(e, reading(10, 31), reading(15, 31), reading(19, 31), reading(20, 31))
    assert statuses(events) == ["firing"] and events[0].time_ns == T0 + 20 * S


async def test_between_with_a_wider_clearing_band(tmp_path: Path) -> None:
    rule = {"type": "threshold", "field": "temperature", "op": "between", "low": 10, "high": 20,
            "clear_low": 8, "clear_high": 22}  # fmt: skip
    e, _ = engine(tmp_path, band=rule)
    await e.start()
    events = await feed(e, reading(0, 5), reading(1, 15), reading(2, 21), reading(3, 9), reading(4, 23))
    assert statuses(events) == ["firing", "resolved"]
    assert events[1].value == 23


async def test_rate_of_change_over_a_window(tmp_path: Path) -> None:
    rule = {"type": "rate", "field": "temperature", "window": "10s", "op": ">", "value": 1.0, "clear": 0.5}
    e, _ = engine(tmp_path, rising=rule)
    await e.start()
    slow = await feed(e, reading(0, 20), reading(5, 22), reading(10, 24))  # 0.4/s
    assert slow == []
    fast = await feed(e, reading(12, 30), reading(14, 40))  # 16 over 4 s within the window
    assert statuses(fast) == ["firing"] and fast[0].value is not None and fast[0].value > 1
    calm = await feed(e, reading(30, 40), reading(35, 40.5))
    assert statuses(calm) == ["resolved"]


async def test_absence_goes_offline_and_back_online(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, silent={"type": "absence", "after": "30s", "select": {"tags": {"site": ["lab"]}}})
    await e.start()
    assert await feed(e, reading(0, 20, "d1"), reading(0, 20, "d2"), reading(0, 20, "d3", site="yard")) == []
    assert [m.data for m in await e.tick(T0 + 29 * S)] == []
    await feed(e, reading(25, 20, "d2"))
    offline = [m.data for m in await e.tick(T0 + 31 * S)]
    assert [(a.device_id, a.status) for a in offline] == [("d1", "firing")]  # d2 spoke, d3 is not selected
    assert offline[0].summary == "d1 is offline (silent for 0:00:30)"
    assert [m.data for m in await e.tick(T0 + 40 * S)] == []  # no re-fire
    back = await feed(e, reading(41, 20, "d1"))
    assert [(a.device_id, a.status, a.alert_id) for a in back] == [("d1", "resolved", offline[0].alert_id)]


async def test_selectors_on_device_id_and_tags(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, hot={**HOT, "select": {"device_id": ["sensor-*"], "tags": {"site": ["lab", "roof"]}}})
    await e.start()
    events = await feed(
        e, reading(0, 40, "other"), reading(0, 40, "sensor-1", "yard"), reading(0, 40, "sensor-2", "roof")
    )
    assert [a.device_id for a in events] == ["sensor-2"]


async def test_firing_alerts_survive_a_restart_without_refiring(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, hot=HOT)
    await e.start()
    await feed(e, reading(0, 40))
    await e.close()
    assert [a.rule for a in read_state(tmp_path / "alerts.json")] == ["hot"]
    again, _ = engine(tmp_path, hot=HOT)
    await again.start()
    assert await feed(again, reading(1, 41)) == []
    assert statuses(await feed(again, reading(2, 20))) == ["resolved"]
    assert read_state(tmp_path / "alerts.json") == []


async def test_reload_resolves_alerts_of_removed_or_changed_rules_and_keeps_the_rest(tmp_path: Path) -> None:
    e, _ = engine(tmp_path, hot=HOT, cold={"type": "threshold", "field": "temperature", "op": "<", "value": 0})
    await e.start()
    await feed(e, reading(0, 40, "d1"), reading(0, -5, "d2"))
    new = AlertsConfig.model_validate({"subscription": "alerts", "rules": {"hot": HOT}})
    e.replace_rules(dict(new.rules))
    out = [m.data for m in await e.tick(T0)]
    assert [(a.rule, a.status) for a in out] == [("cold", "resolved")]
    assert [a.rule for a in e.firing()] == ["hot"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"type": "threshold", "field": "t", "op": ">", "value": 30, "clear": 31}, "clear (31.0) must be at or below"),
        ({"type": "threshold", "field": "t", "op": ">"}, "needs a value"),
        ({"type": "threshold", "field": "t", "op": "between", "low": 5, "high": 1}, "low <= high"),
        ({"type": "threshold", "field": "t", "op": ">", "value": 1, "summary": "{nope}"}, "unknown name {nope}"),
        ({"type": "rate", "field": "t", "op": ">", "value": 1, "window": "0s"}, "window must be positive"),
        ({"type": "absence"}, "Field required"),
        ({"type": "sometimes"}, "does not match any of the expected tags"),
    ],
)
def test_bad_rules_are_refused_with_a_precise_message(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AlertsConfig.model_validate({"subscription": "a", "rules": {"r": rule}})
    assert message in str(exc.value)


def test_processor_runner_is_forced_to_one_in_flight_with_bounded_retries() -> None:
    cfg = AlertsConfig.model_validate({"subscription": "a", "runner": {"max_in_flight": 4}})
    assert cfg.runner.max_in_flight == 1 and cfg.runner.max_retries == 3
