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
from tests.mqtt_bytes import connect as _connect
from tests.mqtt_bytes import packet as _packet
from tests.mqtt_bytes import publish as _publish
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


def _offsets(replies: bytes) -> list[int]:
    offsets, i = [], 0
    while i < len(replies):
        offsets.append(i)
        i += 2 + replies[i + 1]
    return offsets


async def test_raw_packets_split_or_packed_any_way_are_read_and_acknowledged_in_order() -> None:
    port = free_port()
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port), Metrics())
    got: list[tuple[bytes, int]] = []

    async def handler(message: RawMessage) -> None:
        got.append((message.payload, message.qos))

    async with running(ingress, handler):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_connect("emb-raw-1"))
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        first = _publish("emb-raw/d1", b"p1", 1, 1)
        for i in range(len(first)):  # one byte at a time
            writer.write(first[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.write(b"".join(_publish("emb-raw/d1", b"p%d" % i, 1, i) for i in range(2, 6)) + _packet(0xC0, b""))
        replies = await asyncio.wait_for(reader.readexactly(4 * 5 + 2), 5)
        packets = [replies[i : i + 4] if replies[i] == 0x40 else replies[i : i + 2] for i in _offsets(replies)]
        assert b"\xd0\x00" in packets  # PINGRESP, maybe before PUBACKs that wait for the hand-over
        assert [p for p in packets if p != b"\xd0\x00"] == [b"\x40\x02" + i.to_bytes(2, "big") for i in range(1, 6)]
        writer.write(_publish("emb-raw/d1", b"q2", 2, 9))  # QoS 2 takes amqtt's own path
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x50\x02\x00\x09"
        writer.write(_packet(0x62, b"\x00\x09"))
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x70\x02\x00\x09"
        writer.write(_publish("emb-raw/d1", b"q0", 0, 0) + _packet(0xE0, b""))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # DISCONNECT: the broker closes
        writer.close()
        await wait_for(lambda: len(got) == 7)
    assert got == [(b"p%d" % i, 1) for i in range(1, 6)] + [(b"q2", 2), (b"q0", 0)]


@pytest.mark.parametrize(
    "bad",
    [
        _packet(0x36, b"\x00\x01a\x00\x01x"),
        _packet(0x30, b"\x00\x02\xff\xfe"),
        b"\x30\xff\xff\xff\xff\x01",
        b"\xf0\x00",
    ],
    ids=["qos3", "topic-not-utf8", "length-over-4-bytes", "reserved-type"],
)
async def test_a_malformed_packet_closes_only_its_connection(bad: bytes, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    metrics = Metrics()
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port), metrics)
    got: list[bytes] = []

    async def handler(message: RawMessage) -> None:
        got.append(message.payload)

    async with running(ingress, handler):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_connect("emb-raw-bad"))
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        writer.write(_publish("emb-raw/d2", b"before", 1, 1) + bad + _publish("emb-raw/d2", b"after", 1, 2))
        # closed: "before" may be acknowledged first, or handed over after the close unacknowledged
        assert await asyncio.wait_for(reader.read(), 5) in (b"", b"\x40\x02\x00\x01")
        writer.close()
        async with aiomqtt.Client("127.0.0.1", port, identifier="emb-raw-good") as device:
            await device.publish("emb-raw/d3", b"other", qos=1)
        await wait_for(lambda: b"other" in got)
    assert got in ([b"before", b"other"], [b"other"]), "nothing after the malformed packet was read"
    assert "malformed packet" in caplog.text
    assert sample(metrics, "gateway_broker_protocol_errors_total", {"reason": "malformed"}) == 1


async def test_a_packet_over_max_packet_bytes_closes_the_connection_before_it_is_read() -> None:
    port = free_port()
    metrics = Metrics()
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port, max_packet_bytes=2048), metrics)
    got: list[int] = []

    async def handler(message: RawMessage) -> None:
        got.append(len(message.payload))

    async with running(ingress, handler):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_connect("emb-raw-big"))
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        body = b"\x00\x0aemb-raw/d4" + b"x" * 2000
        writer.write(b"\x30" + bytes([len(body) & 0x7F | 0x80, len(body) >> 7]) + body)  # 2,015 bytes: fits
        writer.write(b"\x30\x90\x4e")  # the header of a 10,000-byte packet: closed before its body comes
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await wait_for(lambda: got == [2000])
    assert sample(metrics, "gateway_broker_protocol_errors_total", {"reason": "too_large"}) == 1


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
