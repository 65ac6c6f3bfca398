"""The embedded broker keeps what a device sent before it disconnected, however slow the gateway.

A device that publishes and disconnects at once (fire and forget, the battery-powered
pattern) leaves its last publishes queued in the broker while the gateway is busy. amqtt 0.12
clears the queue of a disconnected clean session at its next session-expiry pass (every
second), or when a new connection takes the client id; the broker must hand the queue over
first (`gateway.ingress.embedded_broker`). Found by the embedded QoS 0 bench, which lost
about 1,000 of 18,000 messages once in a few runs.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.config import EmbeddedIngressConfig
from gateway.ingress.embedded import EmbeddedIngress
from tests.integration.test_ingress_embedded import running, wait_for
from tests.mqtt_bytes import DISCONNECT, connect, publish
from tests.servers import free_port

pytestmark = pytest.mark.integration

COUNT = 300
HANDLE_S = 0.008  # per message: the hand-over of COUNT messages outlasts two expiry passes


async def _fire_and_forget(port: int, client_id: str, topic: str, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect(client_id))
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
    writer.write(b"".join(publish(topic, b"%d" % i, 0, 0) for i in range(count)) + DISCONNECT)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("then_reconnect", [False, True], ids=["expiry", "same-client-id-reconnects"])
async def test_publishes_before_a_disconnect_all_reach_a_slow_gateway(then_reconnect: bool) -> None:
    port = free_port()
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=port), Metrics())
    got: list[tuple[str, bytes]] = []

    async def slow(message: RawMessage) -> None:
        await asyncio.sleep(HANDLE_S)
        got.append((message.topic, message.payload))

    async with running(ingress, slow):
        await _fire_and_forget(port, "emb-fire-1", "emb-fire/a", COUNT)
        if then_reconnect:  # the same client id again while the first connection's queue is handed over
            await asyncio.sleep(0.2)
            await _fire_and_forget(port, "emb-fire-1", "emb-fire/b", 10)
        expected = COUNT + (10 if then_reconnect else 0)
        await wait_for(lambda: len(got) >= expected, within=COUNT * HANDLE_S + 10)
        await asyncio.sleep(0.3)  # nothing more arrives
    assert [p for t, p in got if t == "emb-fire/a"] == [b"%d" % i for i in range(COUNT)]
    if then_reconnect:
        assert [p for t, p in got if t == "emb-fire/b"] == [b"%d" % i for i in range(10)]
