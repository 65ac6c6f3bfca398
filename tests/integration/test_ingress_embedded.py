"""The embedded ingress with real MQTT clients: hand-over, forwarding, backpressure, stop, port errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.base import IngressError, MessageHandler
from gateway.ingress.config import EmbeddedIngressConfig
from gateway.ingress.embedded import EmbeddedIngress
from tests.servers import free_port

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running(ingress: EmbeddedIngress, handler: MessageHandler) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(ingress.run(handler))
    await asyncio.wait_for(ingress.wait_started(), 5)
    try:
        yield task
    finally:
        await asyncio.wait_for(ingress.stop(), 10)
        await asyncio.wait_for(task, 5)


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def wait_for(predicate: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_publishes_reach_the_handler_and_subscribed_devices() -> None:
    port = free_port()
    metrics = Metrics()
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port), metrics)
    got: list[RawMessage] = []

    async def handler(message: RawMessage) -> None:
        got.append(message)

    before = time.time_ns()
    async with running(ingress, handler):
        assert ingress.connected and sample(metrics, "gateway_broker_connected") == 1
        async with aiomqtt.Client("127.0.0.1", port, identifier="emb-watcher") as watcher:
            await watcher.subscribe("emb-fwd/#", qos=1)
            async with aiomqtt.Client("127.0.0.1", port, identifier="emb-device-1") as device:
                await device.publish("emb-fwd/d1/telemetry", b'{"t": 1}', qos=0)
                await device.publish("emb-fwd/d1/status", b"online", qos=1)
            forwarded = []
            async with asyncio.timeout(5):
                async for message in watcher.messages:
                    forwarded.append((message.topic.value, message.payload))
                    if len(forwarded) == 2:
                        break
        await wait_for(lambda: len(got) == 2)
    assert [(m.topic, m.payload, m.qos, m.client_id) for m in got] == [
        ("emb-fwd/d1/telemetry", b'{"t": 1}', 0, "emb-device-1"),
        ("emb-fwd/d1/status", b"online", 1, "emb-device-1"),
    ]
    assert all(before <= m.received_ns <= time.time_ns() for m in got)
    assert sorted(forwarded) == [("emb-fwd/d1/status", b"online"), ("emb-fwd/d1/telemetry", b'{"t": 1}')]
    assert sample(metrics, "gateway_messages_received_total", {"ingress": "embedded"}) == 2
    assert not ingress.connected and sample(metrics, "gateway_broker_connected") == 0


async def test_a_failing_handler_is_logged_not_acknowledged_and_later_messages_still_flow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port), Metrics())
    got: list[bytes] = []

    async def handler(message: RawMessage) -> None:
        if message.payload == b"boom":
            raise RuntimeError("bus closed")
        got.append(message.payload)

    async with running(ingress, handler):
        async with aiomqtt.Client("127.0.0.1", port, identifier="emb-device-2") as device:
            await device.publish("emb-fail/d2", b"one", qos=1)
            boom = asyncio.create_task(device.publish("emb-fail/d2", b"boom", qos=1))
            await device.publish("emb-fail/d2", b"two", qos=1)
            await asyncio.sleep(0.3)
            assert not boom.done(), "a publish the handler failed on is not acknowledged"
            boom.cancel()
        await wait_for(lambda: len(got) == 2)
    assert got == [b"one", b"two"]
    assert "handler failed" in caplog.text and "bus closed" in caplog.text


async def test_slow_handler_nothing_is_acknowledged_before_the_handler_took_it() -> None:
    port = free_port()
    limit = 5
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port, max_queued_per_connection=limit), Metrics())
    release = asyncio.Event()
    got: list[bytes] = []

    async def handler(message: RawMessage) -> None:
        await release.wait()
        got.append(message.payload)

    acknowledged: list[bytes] = []

    async def publish(device: aiomqtt.Client, payload: bytes) -> None:
        await device.publish("emb-slow/d3", payload, qos=1)  # returns on PUBACK
        acknowledged.append(payload)

    task = asyncio.create_task(ingress.run(handler))
    await ingress.wait_started()
    async with aiomqtt.Client("127.0.0.1", port, identifier="emb-device-3", max_inflight_messages=50) as device:
        publishers = [asyncio.create_task(publish(device, b"%03d" % i)) for i in range(50)]
        await asyncio.sleep(0.5)
        assert acknowledged == [], "no PUBACK while the handler has not taken the message"
        stopping = asyncio.create_task(ingress.stop())
        await asyncio.sleep(0.1)
        release.set()
        await asyncio.wait_for(stopping, 10)
        await asyncio.wait_for(task, 5)
        for p in publishers:
            p.cancel()
        await asyncio.gather(*publishers, return_exceptions=True)
    assert got, "what was read before the stop is handed over"
    assert got == sorted(got), "in the order the device sent them"
    assert set(acknowledged) <= set(got), "every acknowledged publish was handed over"
    assert len(got) <= limit + 3, "the gate stopped reading the connection while the handler was blocked"


async def test_port_in_use_is_a_setup_error_naming_the_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port), Metrics())

        async def handler(message: RawMessage) -> None:
            raise AssertionError("no message expected")

        with pytest.raises(IngressError) as run_error:
            await asyncio.wait_for(ingress.run(handler), 5)
        with pytest.raises(IngressError) as started_error:
            await ingress.wait_started()
    text = str(run_error.value)
    assert text == f"ingress.port: cannot listen on 127.0.0.1:{port}: address already in use"
    assert started_error.value is run_error.value
    assert not ingress.connected


async def test_stop_returns_and_frees_the_port() -> None:
    port = free_port()
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port), Metrics())

    async def handler(message: RawMessage) -> None:
        return None

    async with running(ingress, handler), aiomqtt.Client("127.0.0.1", port, identifier="emb-device-4") as device:
        await device.publish("emb-stop/d4", b"x", qos=1)
    assert not ingress.connected
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
    again = EmbeddedIngress(EmbeddedIngressConfig(port=port), Metrics())
    async with running(again, handler):
        assert again.connected
