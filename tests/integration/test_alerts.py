"""Alerts end to end: real Mosquitto, a local HTTP receiver, the gateway in process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from gateway.processors.alert_state import read_state
from gateway.sinks.sqlite_store import query_readings
from gateway.sinks.webhook import verify_signature
from tests.integration.alerting_helpers import (
    SECRET,
    Receiver,
    config,
    publish,
    running_gateway,
    telemetry,
    wait_for,
)
from tests.servers import Mosquitto, free_port

pytestmark = pytest.mark.integration

HOT = {"type": "threshold", "field": "temperature", "op": ">", "value": 30, "clear": 28, "severity": "critical"}
FAST_RUNNER = {"retry_min_backoff": "50ms", "retry_max_backoff": "200ms", "max_retries": 4}


def alerts_config(
    tmp_path: Path, m: Mosquitto, url: str, rules: dict[str, Any], admin_port: int | None = None, **webhook: Any
) -> Path:
    admin = {"admin": {"enabled": True, "port": admin_port}} if admin_port else {}
    return config(
        tmp_path,
        m.port,
        {"alerts": {"subscription": "alert-engine", "check_interval": "100ms", "rules": rules}, **admin},
        {
            "alert-engine": {"topic": "telemetry", "batch": {"max_latency": "20ms"}},
            "to-webhook": {"topic": "alerts", "batch": {"max_latency": "10ms"}},
            "to-mqtt": {"topic": "alerts", "batch": {"max_latency": "10ms"}},
            "to-log": {"topic": "alerts"},
        },
        {
            "webhook": {"type": "webhook", "subscription": "to-webhook", "url": url, "secret": SECRET,
                        "timeout": "1s", "runner": FAST_RUNNER, **webhook},
            "mqtt": {"type": "mqtt_publish", "subscription": "to-mqtt", "port": m.port, "retain": True,
                     "topic": "alerts/{rule}/{device_id}"},
            "log": {"type": "log", "subscription": "to-log"},
        },
    )  # fmt: skip


async def test_alert_fires_and_resolves_through_webhook_mqtt_and_state_file(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with Receiver(statuses=[500, 503]) as receiver:
        port = free_port()
        path = alerts_config(tmp_path, mosquitto, receiver.url, {"hot": {**HOT, "for": "0s"}}, admin_port=port)
        async with running_gateway(path):
            await publish(mosquitto.port, [telemetry("a1", 20), telemetry("a1", 35), telemetry("a1", 36)])
            await wait_for(lambda: len(receiver.answers) >= 3)  # 500, 503, then 200
            assert receiver.answers[:3] == [500, 503, 200]
            assert [a.device_id for a in read_state(tmp_path / "data" / "alerts.json")] == ["a1"]
            await publish(mosquitto.port, [telemetry("a1", 29), telemetry("a1", 27)])  # 29: hysteresis band
            await wait_for(lambda: len(receiver.answers) >= 4)
            await wait_for(lambda: b"resolved" in receiver.requests[-1][1])
            metrics = await scrape(port)
            deadline = time.monotonic() + 10  # the MQTT and log forwarders deliver on their own subscriptions
            while any(metrics.get(("gateway_sink_written_total", "sink", s), 0) < 2 for s in ("mqtt", "log")):
                assert time.monotonic() < deadline, "forwarders did not deliver both events"
                await asyncio.sleep(0.1)
                metrics = await scrape(port)
        headers, body = receiver.requests[-1]
        events = [orjson.loads(b) for _, b in receiver.requests]
        assert [e["status"] for e in events] == ["firing", "firing", "firing", "resolved"]  # retried, then resolved
        assert len({e["alert_id"] for e in events}) == 1
        assert all(verify_signature(SECRET.encode(), b, h.get("x-gateway-signature")) for h, b in receiver.requests)
        assert not verify_signature(b"wrong", body, headers.get("x-gateway-signature"))
        assert headers["x-gateway-event"] == "alert"
    assert read_state(tmp_path / "data" / "alerts.json") == []
    # the MQTT forwarder retained the alert's current state
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"sub-{time.time_ns()}") as client:
        await client.subscribe("alerts/hot/#", qos=1)
        async with asyncio.timeout(5):
            msg = await anext(aiter(client.messages))
    assert str(msg.topic) == "alerts/hot/a1" and msg.retain
    assert orjson.loads(bytes(msg.payload))["status"] == "resolved"  # type: ignore[arg-type]
    # the metrics, per rule and per forwarder, as /metrics serves them
    assert metrics["gateway_alert_evaluations_total", "rule", "hot"] == 5
    assert metrics["gateway_alerts_fired_total", "rule", "hot"] == 1
    assert metrics["gateway_alerts_resolved_total", "rule", "hot"] == 1
    assert metrics["gateway_alert_latency_seconds_count", "rule", "hot"] == 2  # reading receipt -> event
    assert metrics["gateway_sink_written_total", "sink", "webhook"] == 2  # deliveries: firing and resolved
    assert metrics["gateway_sink_retried_total", "sink", "webhook"] == 2  # after the 500 and the 503
    assert metrics["gateway_sink_failed_total", "sink", "webhook"] == 0  # dead-lettered: none
    assert metrics["gateway_sink_write_seconds_count", "sink", "webhook"] == 4  # one per attempt: 3 + 1
    assert metrics["gateway_ingest_to_stored_seconds_count", "sink", "webhook"] == 2  # cause -> delivery latency
    for sink in ("mqtt", "log"):
        assert metrics["gateway_sink_written_total", "sink", sink] == 2


async def scrape(port: int) -> dict[tuple[str, str, str], float]:
    """GET /metrics: (sample name, label, value) -> sample value, for samples with one label."""
    r = await asyncio.to_thread(urllib3.request, "GET", f"http://127.0.0.1:{port}/metrics", retries=False)
    assert r.status == 200
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(r.data.decode()):
        for sample in family.samples:
            if len(sample.labels) == 1:
                [(label, value)] = sample.labels.items()
                out[(sample.name, label, value)] = sample.value
    return out


async def test_a_failing_webhook_is_dead_lettered_after_its_retries(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with Receiver(statuses=[500] * 20) as receiver:
        path = alerts_config(tmp_path, mosquitto, receiver.url, {"hot": HOT})
        async with running_gateway(path) as gw:
            await publish(mosquitto.port, [telemetry("b1", 40)])
            await wait_for(lambda: (tmp_path / "data" / "deadletter.jsonl").exists()
                           and b"gave up" in (tmp_path / "data" / "deadletter.jsonl").read_bytes())  # fmt: skip
        assert len(receiver.answers) == 5  # one request and max_retries=4 retries
    [letter] = [orjson.loads(line) for line in (tmp_path / "data" / "deadletter.jsonl").read_bytes().splitlines()]
    assert letter["source"] == "sink:webhook" and letter["reason"].startswith("gave up after 4 retries: webhook")
    sample = gw.metrics.registry.get_sample_value
    assert sample("gateway_sink_failed_total", {"sink": "webhook"}) == 1  # the forwarder's failures ...
    assert sample("gateway_sink_retried_total", {"sink": "webhook"}) == 4  # ... and retries


async def ingest_seconds(tmp_path: Path, mosquitto: Mosquitto, url: str, n: int) -> float:
    """Seconds from the first publish until all n readings are in the store; every reading fires an alert."""
    path = alerts_config(tmp_path, mosquitto, url, {"hot": HOT}, timeout="2s")
    msgs = [telemetry(f"dev-{i}", 40) for i in range(n)]
    db = tmp_path / "data" / "readings.db"
    async with running_gateway(path):
        started = time.monotonic()
        await publish(mosquitto.port, msgs)

        def stored() -> bool:
            return db.exists() and len(query_readings(db, None, "temperature", None, None, limit=n + 1)) >= n

        await wait_for(stored, 60)
        elapsed = time.monotonic() - started
    return elapsed


async def test_a_dead_webhook_does_not_slow_telemetry_ingestion(tmp_path: Path, mosquitto: Mosquitto) -> None:
    n = 400
    healthy_runs: list[float] = []
    dead_runs: list[float] = []
    for round_ in range(2):  # interleaved, best of two each: the machine is shared and noisy
        with Receiver() as healthy:
            healthy_runs.append(await ingest_seconds(tmp_path / f"healthy{round_}", mosquitto, healthy.url, n))
        with Receiver(hang=True) as dead:  # accepts, then never answers within the timeout
            dead_runs.append(await ingest_seconds(tmp_path / f"dead{round_}", mosquitto, dead.url, n))
    baseline, with_dead = min(healthy_runs), min(dead_runs)
    print(f"ingest {n} readings: healthy webhook {healthy_runs}s, dead webhook {dead_runs}s")
    assert with_dead < max(2 * baseline, baseline + 1.5)
