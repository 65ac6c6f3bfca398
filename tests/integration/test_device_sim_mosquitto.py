"""The device simulator against a real Mosquitto: what it says it sent is what a subscriber gets."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from device_sim.config import SimConfig
from device_sim.faults import FAULT_KINDS
from device_sim.runner import simulate
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

DEVICE_SIM = Path(sys.executable).with_name("device-sim")


class Collector:
    """A QoS 1 subscriber that keeps every (topic, payload) it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()

    async def settle(self, expected: int, within_s: float = 10.0) -> list[tuple[str, bytes]]:
        """Wait for `expected` messages, then a moment more (so extra messages would show)."""
        async with asyncio.timeout(within_s):
            while len(self.received) < expected:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.sleep(0.3)
        return self.received


@contextlib.asynccontextmanager
async def collecting(port: int, topic_filter: str) -> AsyncIterator[Collector]:
    collector = Collector()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"collector-{topic_filter.split('/')[0]}") as client:
        await client.subscribe(topic_filter, qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                collector.received.append((str(message.topic), payload))
                collector.arrived.set()

        reader = asyncio.create_task(read())
        try:
            yield collector
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def config(mosquitto: Mosquitto, **options: Any) -> SimConfig:
    return SimConfig(port=mosquitto.port, drain_timeout="5s", **options)


async def test_per_device_mode_delivers_every_acknowledged_message(mosquitto: Mosquitto) -> None:
    sim = config(mosquitto, devices=20, rate=25, duration="1500ms", topic_template="it-perdev/{device_id}/telemetry")
    async with collecting(mosquitto.port, "it-perdev/+/telemetry") as collector:
        summary = await simulate(sim)
        received = await collector.settle(summary.acknowledged)
    assert summary.mode == "per-device" and summary.connections == 20
    assert summary.failed == 0 and summary.sent == summary.acknowledged == len(received)
    assert summary.sent >= 700  # 20 devices x 25/s x 1.5 s = 750 due
    assert summary.latency_p50_ms is not None and summary.latency_p99_ms is not None
    for topic, payload in received:
        assert topic == f"it-perdev/{orjson.loads(payload)['device_id']}/telemetry"


async def test_cli_run_with_summary_json(mosquitto: Mosquitto, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    options = "--devices 20 --rate 20 --duration 1500ms --qos 1 --topic-template it-cli/{device_id}/telemetry --seed 3"
    args = [
        str(DEVICE_SIM),
        "--broker",
        f"mqtt://127.0.0.1:{mosquitto.port}",
        *options.split(),
        "--summary-json",
        str(out),
    ]
    async with collecting(mosquitto.port, "it-cli/+/telemetry") as collector:
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
        stdout, _ = await proc.communicate()
        assert proc.returncode == 0, stdout
        summary = orjson.loads(out.read_bytes())
        received = await collector.settle(summary["acknowledged"])
    assert summary["failed"] == 0 and summary["sent"] == summary["acknowledged"] == len(received) >= 500
    assert summary["latency_p99_ms"] >= summary["latency_p50_ms"] > 0
    assert b"acknowledged" in stdout
    assert len({orjson.loads(p)["device_id"] for _, p in received}) == 20


async def test_cli_stops_cleanly_on_sigint(mosquitto: Mosquitto, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    options = "--devices 5 --rate 20 --duration 60s --topic-template it-sigint/{device_id}/telemetry"
    args = [str(DEVICE_SIM), "--broker", f"127.0.0.1:{mosquitto.port}", *options.split(), "--summary-json", str(out)]
    async with collecting(mosquitto.port, "it-sigint/+/telemetry") as collector:
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
        await collector.settle(20)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            await proc.communicate()
        summary = orjson.loads(out.read_bytes())
        received = await collector.settle(summary["acknowledged"])
    assert proc.returncode == 0
    assert summary["interrupted"] is True and summary["failed"] == 0
    assert summary["sent"] == summary["acknowledged"] == len(received) < 5 * 20 * 10


async def test_batch_mode_sends_arrays_of_k_readings(mosquitto: Mosquitto) -> None:
    sim = config(mosquitto, devices=10, total_rate=200, count=100, batch=5, topic_template="it-batch/{device_id}/t")
    async with collecting(mosquitto.port, "it-batch/+/t") as collector:
        summary = await simulate(sim)
        received = await collector.settle(100)
    assert summary.sent == summary.acknowledged == len(received) == 100 and summary.readings == 500
    stamps: set[tuple[str, object]] = set()
    for _, payload in received:
        readings = orjson.loads(payload)
        assert isinstance(readings, list) and len(readings) == 5
        stamps.update((r["device_id"], r["ts"]) for r in readings)
    assert len(stamps) == 500


async def test_multiplexed_mode_with_bad_messages(mosquitto: Mosquitto) -> None:
    sim = config(
        mosquitto,
        devices=40,
        total_rate=4000,
        count=2100,
        connections=4,
        bad_ratio=0.1,
        topic_template="it-mux/{device_id}/telemetry",
    )
    async with collecting(mosquitto.port, "it-mux/+/telemetry") as collector:
        summary = await simulate(sim)
        received = await collector.settle(2100)
    assert summary.mode == "multiplexed" and summary.connections == 4
    assert summary.failed == 0 and summary.sent == summary.acknowledged == len(received) == 2100
    assert summary.bad_by_kind == dict.fromkeys(sorted(FAULT_KINDS), 30)
    assert sum(len(p) > 256 * 1024 for _, p in received) == 30  # oversize payloads arrive whole
    counters: dict[str, list[int]] = defaultdict(list)
    for topic, payload in received:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            counters[topic].append(orjson.loads(payload)["counter"])
    assert len(counters) == 40
    assert all(values == sorted(values) for values in counters.values()), "each device's messages stay in order"


async def test_processes_and_churn_lose_nothing(mosquitto: Mosquitto) -> None:
    sim = config(
        mosquitto,
        devices=40,
        total_rate=800,
        duration="2s",
        connections=4,
        processes=2,
        churn="500ms",
        churn_fraction=0.5,
        topic_template="it-proc/{device_id}/telemetry",
    )
    async with collecting(mosquitto.port, "it-proc/+/telemetry") as collector:
        summary = await simulate(sim)
        received = await collector.settle(summary.acknowledged)
    assert summary.processes == 2 and summary.reconnects >= 4
    assert summary.failed == 0 and summary.sent == summary.acknowledged == len(received) >= 1400


async def test_per_device_churn_reconnects_devices(mosquitto: Mosquitto) -> None:
    sim = config(
        mosquitto,
        devices=10,
        rate=20,
        duration="1500ms",
        churn="400ms",
        churn_fraction=0.3,
        topic_template="it-churn/{device_id}/telemetry",
    )
    async with collecting(mosquitto.port, "it-churn/+/telemetry") as collector:
        summary = await simulate(sim)
        received = await collector.settle(summary.acknowledged)
    assert summary.reconnects >= 6  # 3 per round, rounds at 0.4, 0.8, 1.2 s
    assert summary.failed == 0 and summary.sent == summary.acknowledged == len(received) >= 250


@pytest.mark.parametrize("processes", [1, 2])
async def test_preload_sends_the_same_messages_and_reports_its_start(mosquitto: Mosquitto, processes: int) -> None:
    """`--preload` changes when messages are generated, not what is sent: with the same seed and
    timestamp base both runs deliver the same payloads; `started_ns` lies within the run."""
    base = 1_790_000_000_000_000_000
    got: dict[bool, list[tuple[str, bytes]]] = {}
    for preload in (False, True):
        prefix = f"it-pre{processes}{int(preload)}"
        sim = config(
            mosquitto, devices=20, total_rate=50_000, count=2_000, batch=5, connections=4, processes=processes,
            preload=preload, topic_template=prefix + "/{device_id}/telemetry",
        )  # fmt: skip
        async with collecting(mosquitto.port, prefix + "/+/telemetry") as collector:
            before = time.time_ns()
            summary = await simulate(sim, start_ns=base)
            after = time.time_ns()
            received = await collector.settle(summary.acknowledged)
        assert summary.failed == 0 and summary.sent == summary.acknowledged == len(received) == 2_000
        assert before < summary.started_ns < after
        got[preload] = sorted((topic.split("/", 1)[1], payload) for topic, payload in received)
    assert got[True] == got[False]
