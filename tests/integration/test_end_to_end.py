"""The whole gateway as users run it: `gateway run` in a subprocess, real MQTT, real stores."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import orjson
import pytest

from tests.gateway_proc import GatewayProcess, run_cli, write_config
from tests.servers import Mosquitto, VictoriaMetrics, free_port

pytestmark = pytest.mark.integration

DEADLETTER_SUB = {"deadletters": {"topic": "deadletter", "dead_letter_topic": None}}
DEADLETTER_SINK = {"deadletters": {"type": "deadletter_file", "subscription": "deadletters"}}

BAD = [
    # (device in the topic, payload, reason code)
    ("bad-1", b"{not json", "malformed_json"),
    ("bad-2", orjson.dumps({"device_id": "bad-2", "temperature": "warm"}), "wrong_type"),
    ("bad-3", orjson.dumps({"device_id": "bad-3", "temperature": 500.0}), "out_of_range"),
    ("bad-4", orjson.dumps({"device_id": "someone-else", "temperature": 20.0}), "device_mismatch"),
    ("bad-5", orjson.dumps({"device_id": "bad-5", "humidity": 20.0}), "missing_field"),
]


def good_payload(device: str, i: int, now_ns: int) -> bytes:
    return orjson.dumps(
        {
            "device_id": device,
            "ts": now_ns - i * 2_000_000,
            "temperature": 20.0 + i % 7,
            "counter": i,
            "site": "lab",
            "firmware": "1.0.0",
        }
    )


async def publish(port: int, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{time.time_ns()}") as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=qos)


def wait_until(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(predicate())  # type: ignore[operator]


async def test_embedded_mode_readings_come_back_from_query(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        ingress={"type": "embedded", "host": "127.0.0.1", "port": port},
        subscriptions={"store": {"topic": "telemetry", "batch": {"max_latency": "50ms"}}, **DEADLETTER_SUB},
        sinks={"store": {"type": "sqlite", "subscription": "store"}, **DEADLETTER_SINK},
    )
    gw = GatewayProcess(config)
    gw.start()
    try:
        now = time.time_ns()
        good = [(f"devices/emb-{i % 3}/telemetry", good_payload(f"emb-{i % 3}", i, now)) for i in range(30)]
        bad = [(f"devices/{d}/telemetry", p) for d, p, _ in BAD]
        await publish(port, good + bad)
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="store"') >= 30), gw.logs()[-2000:]
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="deadletters"') >= len(BAD))
        assert gw.metric("gateway_messages_received_total") == 30 + len(BAD)
        assert gw.metric("gateway_messages_invalid_total") == len(BAD)
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]

    result = run_cli(
        "query", "--config", str(config), "--device", "emb-1", "--field", "temperature", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    rows = orjson.loads(result.stdout)
    assert len(rows) == 10
    assert {r["device_id"] for r in rows} == {"emb-1"}
    expected = sorted(20.0 + i % 7 for i in range(30) if i % 3 == 1)
    assert sorted(r["value"] for r in rows) == expected

    table = run_cli("query", "--config", str(config), "--device", "emb-2")
    assert table.returncode == 0 and "emb-2" in table.stdout and "temperature" in table.stdout

    dl = run_cli("deadletter", "list", "--config", str(config), "--format", "json")
    assert dl.returncode == 0, dl.stderr
    records = orjson.loads(dl.stdout)
    assert len(records) == len(BAD)
    by_topic = {r["topic"]: r for r in records}
    for device, payload, code in BAD:
        rec = by_topic[f"devices/{device}/telemetry"]
        assert rec["code"] == code and rec["source"] == "validation", rec
        assert rec["reason"], rec
        assert rec["payload"] == payload.decode()
        assert rec["received_at"]


async def test_client_mode_exactly_n_points_in_victoria_metrics(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    config = write_config(
        tmp_path,
        ingress={"type": "client", "host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-e2e-client"},
        subscriptions={"tsdb": {"topic": "telemetry", "batch": {"max_latency": "50ms"}}, **DEADLETTER_SUB},
        sinks={"tsdb": {"type": "influxdb", "subscription": "tsdb", "url": victoria.url}, **DEADLETTER_SINK},
    )
    gw = GatewayProcess(config)
    gw.start()
    n = 500
    try:
        now = time.time_ns()
        good = [(f"devices/cli-{i % 5}/telemetry", good_payload(f"cli-{i % 5}", i, now)) for i in range(n)]
        # devices//telemetry matches the MQTT filter devices/+/telemetry, not the route (empty device id)
        bad = [(f"devices/{d}/telemetry", p) for d, p, _ in BAD] + [("devices//telemetry", b"{}")]
        await publish(mosquitto.port, good[: n // 2] + bad + good[n // 2 :])
        assert victoria.wait_for_count('environment_temperature{site="lab"}', n) == n
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="deadletters"') >= len(bad))
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]
    await asyncio.sleep(1)
    assert victoria.count_points('environment_temperature{site="lab"}') == n  # exactly: no duplicates
    assert victoria.count_points("environment_counter") == n
    records = orjson.loads(run_cli("deadletter", "list", "--config", str(config), "--format", "json").stdout)
    assert len(records) == len(bad)
    assert any(r["topic"] == "devices//telemetry" and r["code"] == "no_route" for r in records), records


async def test_victoria_metrics_outage_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    config = write_config(
        tmp_path,
        ingress={"type": "client", "host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-e2e-outage"},
        subscriptions={
            "tsdb": {"topic": "telemetry", "batch": {"max_latency": "50ms", "max_messages": 100}},
            **DEADLETTER_SUB,
        },
        sinks={
            "tsdb": {
                "type": "influxdb",
                "subscription": "tsdb",
                "url": victoria.url,
                "timeout": "2s",
                "runner": {"retry_min_backoff": "100ms", "retry_max_backoff": "1s"},
            },
            **DEADLETTER_SINK,
        },
    )
    gw = GatewayProcess(config)
    gw.start()
    now = time.time_ns()
    msgs = [(f"devices/out-{i % 4}/telemetry", good_payload(f"out-{i % 4}", i, now)) for i in range(600)]
    try:
        await publish(mosquitto.port, msgs[:200])
        assert victoria.wait_for_count("environment_temperature", 200) == 200
        victoria.stop()
        await publish(mosquitto.port, msgs[200:400])
        assert wait_until(lambda: gw.get("/readyz")[0] == 503, 15), "readiness must report the failing sink"
        assert wait_until(lambda: gw.metric("gateway_sink_retried_total", 'sink="tsdb"') > 0, 15)
        await asyncio.sleep(1)
        victoria.start()
        await publish(mosquitto.port, msgs[400:])
        assert victoria.wait_for_count("environment_temperature", 600, timeout=30) == 600
        assert wait_until(lambda: gw.get("/readyz")[0] == 200, 15)
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]
    assert victoria.count_points("environment_temperature") == 600
    assert orjson.loads(run_cli("deadletter", "list", "--config", str(config), "--format", "json").stdout) == []


async def test_sigterm_drains_in_flight_batches(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        ingress={"type": "embedded", "host": "127.0.0.1", "port": port},
        # a long batch latency: without a drain on SIGTERM these readings would never be written
        subscriptions={
            "store": {"topic": "telemetry", "batch": {"max_latency": "30s", "max_messages": 100000}},
            **DEADLETTER_SUB,
        },
        sinks={"store": {"type": "sqlite", "subscription": "store"}, **DEADLETTER_SINK},
    )
    gw = GatewayProcess(config)
    gw.start()
    now = time.time_ns()
    await publish(
        port, [(f"devices/drain-{i % 2}/telemetry", good_payload(f"drain-{i % 2}", i, now)) for i in range(50)]
    )
    assert wait_until(lambda: gw.metric("gateway_readings_valid_total") >= 50)
    assert gw.metric("gateway_sink_written_total", 'sink="store"') == 0
    assert gw.stop() == 0, gw.logs()[-3000:]
    rows = orjson.loads(run_cli("query", "--config", str(config), "--format", "json", "--limit", "1000").stdout)
    assert len([r for r in rows if r["field"] == "temperature"]) == 50
    assert "stopped cleanly" in gw.logs()


def test_port_in_use_is_a_clear_startup_error(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = write_config(
        tmp_path,
        ingress={"type": "embedded", "host": "127.0.0.1", "port": mosquitto.port},
        subscriptions={"store": {"topic": "telemetry"}, **DEADLETTER_SUB},
        sinks={"store": {"type": "sqlite", "subscription": "store"}, **DEADLETTER_SINK},
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert f"127.0.0.1:{mosquitto.port}" in result.stderr and "in use" in result.stderr
