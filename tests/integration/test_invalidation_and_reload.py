"""Cache invalidation on real Mosquitto + Redis, and hot reload of the config file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from gateway.sinks.sqlite_store import query_readings
from tests.integration.alerting_helpers import config, publish, running_gateway, telemetry, wait_for
from tests.servers import Mosquitto, Redis

pytestmark = pytest.mark.integration

WINDOW = 0.3


def invalidation_config(tmp_path: Path, m: Mosquitto, r: Redis, window: float = WINDOW) -> Path:
    return config(
        tmp_path,
        m.port,
        {"invalidation": {"subscription": "cache-detector", "meta_topics": ["devices/{device_id}/meta"],
                          "state_fields": ["firmware"], "window": f"{window}s", "after_sink": "store"}},
        {"cache-detector": {"topic": "telemetry", "batch": {"max_latency": "10ms"}},
         "to-redis": {"topic": "invalidations", "batch": {"max_latency": "10ms"}}},
        {"redis": {"type": "redis", "subscription": "to-redis", "url": r.url, "channel": "inval",
                   "delete_keys": ["device:{device_id}"]}},
    )  # fmt: skip


async def collect(pubsub: Any, into: list[dict[str, Any]]) -> None:
    async for msg in pubsub.listen():
        if msg["type"] == "message":
            into.append(orjson.loads(msg["data"]))


async def test_metadata_change_invalidates_the_redis_cache_within_the_window_once(
    tmp_path: Path, mosquitto: Mosquitto, redis: Redis
) -> None:
    client = aioredis.Redis.from_url(redis.url)
    pubsub = client.pubsub()
    await pubsub.subscribe("inval")
    got: list[dict[str, Any]] = []
    listener = asyncio.create_task(collect(pubsub, got))
    try:
        async with running_gateway(invalidation_config(tmp_path, mosquitto, redis)):
            await client.set("device:m1", "cached")
            await client.set("device:other", "cached")
            started = time.monotonic()
            await publish(mosquitto.port, [("devices/m1/meta", {"location": "roof"})], retain=True)
            await wait_for(lambda: bool(got), 5)
            latency = time.monotonic() - started
            assert await client.exists("device:m1") == 0 and await client.exists("device:other") == 1
            assert latency < WINDOW + 0.5, latency
            # ten quick changes of one device: one invalidation
            got.clear()
            await publish(mosquitto.port, [("devices/m2/meta", {"rev": i}) for i in range(10)])
            await asyncio.sleep(WINDOW * 3)
            assert [(e["ids"], e["changes"]) for e in got] == [(["m2"], 10)]
    finally:
        listener.cancel()
        await pubsub.aclose()
        await client.aclose()


async def test_pending_invalidations_are_sent_at_shutdown(tmp_path: Path, mosquitto: Mosquitto, redis: Redis) -> None:
    client = aioredis.Redis.from_url(redis.url)
    pubsub = client.pubsub()
    await pubsub.subscribe("inval")
    got: list[dict[str, Any]] = []
    listener = asyncio.create_task(collect(pubsub, got))
    db = tmp_path / "data" / "readings.db"
    try:
        await client.set("device:s1", "cached")
        async with running_gateway(invalidation_config(tmp_path, mosquitto, redis, window=3600)):
            await publish(mosquitto.port, [("devices/s1/meta", {"location": "roof"})], retain=True)
            await publish(mosquitto.port, [telemetry("s2", 20, firmware="1.0"), telemetry("s2", 20, firmware="2.0")])

            def stored() -> bool:
                try:
                    return len(query_readings(db, "s2", "firmware", None, None)) == 2
                except (FileNotFoundError, sqlite3.OperationalError):  # not created yet
                    return False

            await wait_for(stored)
            await asyncio.sleep(0.3)
            assert got == [] and await client.exists("device:s1") == 1  # the one-hour window is still open
        # stopped: the pending invalidations were sent before the Redis forwarder was drained
        assert await client.exists("device:s1") == 0
        await wait_for(lambda: len(got) == 2, 5)
        assert sorted((e["ids"][0], e["sources"][0]) for e in got) == [("s1", "meta"), ("s2", "telemetry")]
    finally:
        listener.cancel()
        await pubsub.aclose()
        await client.aclose()


async def test_a_state_field_change_is_invalidated_only_after_the_reading_is_stored(
    tmp_path: Path, mosquitto: Mosquitto, redis: Redis
) -> None:
    client = aioredis.Redis.from_url(redis.url)
    pubsub = client.pubsub()
    await pubsub.subscribe("inval")
    got: list[dict[str, Any]] = []
    db = tmp_path / "data" / "readings.db"
    stored_at_event: list[int] = []

    async def on_event() -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                got.append(orjson.loads(msg["data"]))
                rows = query_readings(db, "f1", "firmware", None, None)
                stored_at_event.append(sum(r["value"] == "2.0" for r in rows))

    listener = asyncio.create_task(on_event())
    try:
        async with running_gateway(invalidation_config(tmp_path, mosquitto, redis)):
            await publish(mosquitto.port, [telemetry("f1", 20, firmware="1.0")])
            await publish(mosquitto.port, [telemetry("f1", 20, firmware="1.0"), telemetry("f1", 20, firmware="2.0")])
            await wait_for(lambda: bool(got), 5)
        assert [(e["ids"], e["sources"], e["fields"]) for e in got] == [(["f1"], ["telemetry"], ["firmware"])]
        assert stored_at_event == [1]  # the reading that changed the firmware was in the store already
    finally:
        listener.cancel()
        await pubsub.aclose()
        await client.aclose()


async def test_hot_reload_applies_a_good_file_and_rejects_a_bad_one(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    rule = {"type": "threshold", "field": "temperature", "op": ">", "value": 30}
    path = config(
        tmp_path, mosquitto.port,
        {"alerts": {"subscription": "alert-engine", "rules": {"hot": rule}}},
        {"alert-engine": {"topic": "telemetry", "batch": {"max_latency": "10ms"}}, "to-log": {"topic": "alerts"}},
        {"log": {"type": "log", "subscription": "to-log"}},
    )  # fmt: skip
    async with running_gateway(path) as gw:
        engine = gw.processors.engine
        assert engine is not None and gw.reloader is not None
        await publish(mosquitto.port, [telemetry("h1", 35)])
        await wait_for(lambda: [a.device_id for a in engine.firing()] == ["h1"])
        # a good file, noticed as a change of the file: the threshold moves to 40 (h1 resolves, h2 at 35 does not fire)
        doc = yaml.safe_load(path.read_text())
        doc["alerts"]["rules"]["hot"]["value"] = 40
        path.write_text(yaml.safe_dump(doc))
        await wait_for(lambda: engine.firing() == [], 6)
        await publish(mosquitto.port, [telemetry("h2", 35), telemetry("h3", 45)])
        await wait_for(lambda: [a.device_id for a in engine.firing()] == ["h3"])
        # a bad file (SIGHUP path): rejected with a precise message, the rules in force stay
        doc["alerts"]["rules"]["hot"]["op"] = "~"
        path.write_text(yaml.safe_dump(doc))
        assert gw.reloader.reload() is False
        [err] = [r.getMessage() for r in caplog.records if r.name == "gateway.reload" and r.levelname == "ERROR"]
        assert "alerts.rules.hot.op: Input should be '>', '<' or 'between'" in err and "line " in err
        await publish(mosquitto.port, [telemetry("h4", 41)])
        await wait_for(lambda: sorted(a.device_id for a in engine.firing()) == ["h3", "h4"])
        m = gw.metrics.registry
        assert m.get_sample_value("gateway_config_reloads_total", {"result": "ok"}) == 1
        assert m.get_sample_value("gateway_config_reloads_total", {"result": "rejected"}) == 1
