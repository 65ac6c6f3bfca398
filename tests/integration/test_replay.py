"""Replay, as operators run it: `gateway seek` and `gateway deadletter replay` against `gateway run`.

Embedded MQTT broker, durable (sqlite) bus, the embedded sqlite store and the dead-letter file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.gateway_proc import GatewayProcess, run_cli, write_config
from tests.integration.test_end_to_end import good_payload, publish, wait_until
from tests.servers import free_port

pytestmark = pytest.mark.integration

SUBS = {
    "store": {"topic": "telemetry", "batch": {"max_latency": "50ms"}},
    "deadletters": {"topic": "deadletter", "dead_letter_topic": None, "batch": {"max_latency": "50ms"}},
}
SINKS = {
    "store": {"type": "sqlite", "subscription": "store"},
    "deadletters": {"type": "deadletter_file", "subscription": "deadletters", "fsync": False},
}


def gateway_config(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    config = write_config(tmp_path, {"type": "embedded", "host": "127.0.0.1", "port": port}, SINKS, SUBS)
    return config, port


def store_rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "data" / "readings.db") as conn:
        return conn.execute("SELECT measurement, tags, field, time_ns FROM readings").fetchall()


def cli_json(*args: str) -> Any:
    result = run_cli(*args, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    return orjson.loads(result.stdout)


async def test_seek_redelivers_to_the_store_without_duplicates_online_and_offline(tmp_path: Path) -> None:
    config, port = gateway_config(tmp_path)
    gw = GatewayProcess(config)
    gw.start()
    n = 20
    try:
        start = datetime.now(UTC).isoformat()
        await asyncio.sleep(0.01)
        now = time.time_ns()
        await publish(
            port, [(f"devices/seek-{i % 4}/telemetry", good_payload(f"seek-{i % 4}", i, now)) for i in range(n)]
        )
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="store"') >= n), gw.logs()[-2000:]
        rows = store_rows(tmp_path)
        assert len(rows) == n * 3  # temperature, counter, firmware

        result = run_cli("seek", "store", "--to", start, "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert f"{n} message(s) published since then will be delivered (now)" in result.stdout, result.stdout
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="store"') >= 2 * n)
        await asyncio.sleep(0.3)
        assert gw.metric("gateway_sink_written_total", 'sink="store"') == 2 * n
        assert sorted(store_rows(tmp_path)) == sorted(rows)  # idempotent on point identity: no duplicates

        skip = cli_json("seek", "store", "--to", "now", "--config", str(config))
        assert (skip["redeliver"], skip["offline"]) == (0, False)
        unknown = run_cli("seek", "nope", "--to", "-1h", "--config", str(config))
        assert unknown.returncode == 2 and "no subscription 'nope'" in unknown.stderr
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]

    offline = run_cli("seek", "store", "--to", "-10m", "--config", str(config))
    assert offline.returncode == 0, offline.stderr
    assert "seeking offline" in offline.stderr
    assert f"{n} message(s) published since then will be delivered (at the next start)" in offline.stdout
    gw = GatewayProcess(config)
    gw.start()
    try:
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="store"') >= n), gw.logs()[-2000:]
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]
    assert sorted(store_rows(tmp_path)) == sorted(rows)


async def test_deadletter_replay_after_a_config_fix_injects_each_dead_letter_once(tmp_path: Path) -> None:
    config, port = gateway_config(tmp_path)
    no_route = [(f"devices/s{i}/status", orjson.dumps({"device_id": f"s{i}", "temperature": 21.5})) for i in range(3)]
    missing = [(f"devices/m{i}/telemetry", orjson.dumps({"device_id": f"m{i}", "humidity": 40.0})) for i in range(3)]
    broken = [("devices/b0/telemetry", b"{not json")]
    gw = GatewayProcess(config)
    gw.start()
    try:
        await publish(port, no_route + missing + broken)
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="deadletters"') >= 7)
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]

    # the fix: a route for the status topic, temperature no longer required
    data = yaml.safe_load(config.read_text())
    data["routes"].append({"pattern": "devices/{device_id}/status", "schema": "environment"})
    data["schemas"]["environment"]["fields"]["temperature"]["required"] = False
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    gw = GatewayProcess(config)
    gw.start()
    try:
        dry = cli_json("deadletter", "replay", "--dry-run", "--config", str(config))
        assert (dry["matched"], dry["replayed"], dry["valid"], dry["refused_again"]) == (7, 7, 6, {"malformed_json": 1})
        assert gw.metric("gateway_messages_received_total") == 0 and store_rows(tmp_path) == []

        first = cli_json("deadletter", "replay", "--reason", "no_route", "--config", str(config))
        assert (first["matched"], first["replayed"], first["valid"], first["readings"]) == (3, 3, 3, 3)
        second = run_cli("deadletter", "replay", "--config", str(config))
        assert second.returncode == 0, second.stderr
        assert "replayed 4 of 7 matching dead letter(s)" in second.stdout, second.stdout
        assert "refused again      1: malformed_json 1" in second.stdout
        assert "already replayed   3" in second.stdout
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="store"') >= 6)
        # the message refused again is a new dead letter: wait for the 8th entry
        assert wait_until(lambda: gw.metric("gateway_sink_written_total", 'sink="deadletters"') >= 1)

        again = cli_json("deadletter", "replay", "--config", str(config))
        assert (again["matched"], again["replayed"], again["already_replayed"]) == (8, 0, 8)
        await asyncio.sleep(0.3)
        assert gw.metric("gateway_sink_written_total", 'sink="store"') == 6
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]

    devices = {orjson.loads(tags)["device_id"] for _, tags, _, _ in store_rows(tmp_path)}
    assert devices == {"s0", "s1", "s2", "m0", "m1", "m2"}
    records = cli_json("deadletter", "list", "--config", str(config))
    assert len(records) == 8
    assert (tmp_path / "data" / "deadletter.jsonl.replayed").exists()


def test_replay_and_seek_say_clearly_when_the_gateway_is_not_running(tmp_path: Path) -> None:
    config, _ = gateway_config(tmp_path)
    replay = run_cli("deadletter", "replay", "--config", str(config))
    assert replay.returncode == 1
    assert "no gateway answers" in replay.stderr and "needs the running gateway" in replay.stderr
    seek = run_cli("seek", "store", "--to", "-1h", "--config", str(config))
    assert seek.returncode == 1 and "no bus database" in seek.stderr
