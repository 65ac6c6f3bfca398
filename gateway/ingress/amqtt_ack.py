"""amqtt's broker protocol handler, changed to acknowledge a QoS 1 publish only once the
gateway has taken it.

amqtt 0.12 sends PUBACK as soon as an incoming QoS 1 publish is queued for the broker,
before anything has handled it: a crash, or a connection that drops with publishes still
queued, then loses messages the device believes delivered. `AckAfterHandoverHandler` holds
the PUBACK until the broker calls `settle(message, taken)` for it:

* `taken=True` (the gateway's handler returned: the message is on the bus, durably with the
  sqlite backend; or the publish was refused by the ACL, which MQTT 3.1.1 can only
  acknowledge and drop): PUBACK is sent.
* `taken=False` (the handler failed, or the gateway is stopping): no PUBACK. The device keeps
  the message and sends it again after it reconnects (persistent session), to this gateway
  or another one.
* The connection ends first (device gone, broker stopping): no PUBACK, same outcome.

Not changed: QoS 0 (never acknowledged); QoS 2, where amqtt sends PUBREC on receipt and
PUBCOMP after queueing (a crash between them loses the message: telemetry should use QoS 1);
outgoing publishes to subscribed devices.

On TCP and TLS connections the handler reads with `gateway.ingress.amqtt_reader.read_loop`,
which registers each QoS 1 publish (`expect_settle`) instead of starting a task for it:
`settle` then queues its PUBACK, and the PUBACKs queued in one pass of the event loop go out
in one write, in the order they were settled. Publishes read by amqtt's own loop (other
transports, QoS 2) each run in a task, which waits here for `settle`. Either way waiting does
not stop the connection from being read: the device's in-flight window and the gateway's
gate (`gate`, set by `gateway.ingress.embedded_broker`) bound how many wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.adapters import StreamReaderAdapter
from amqtt.errors import AMQTTError
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING

from gateway.ingress.amqtt_reader import read_loop


class AckAfterHandoverHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped
    """A `BrokerProtocolHandler` whose incoming QoS 1 PUBACK waits for `settle`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # keyed by id(): amqtt's messages have __slots__ and no __weakref__
        self._awaiting_handover: dict[int, asyncio.Future[bool]] = {}
        self._awaiting_settle: dict[int, int] = {}  # read by read_loop: id -> packet id
        self._pubacks: list[bytes] = []
        self.gate: Callable[[Any], Awaitable[None]] | None = None  # awaited before each publish is queued
        self.max_packet_bytes = 268_435_455  # MQTT's largest; the embedded broker sets its own
        self.on_protocol_error: Callable[[str], None] | None = None

    async def _reader_loop(self) -> None:
        if isinstance(self.reader, StreamReaderAdapter):
            await read_loop(self, self.reader._reader)
        else:
            await super()._reader_loop()

    def expect_settle(self, app_message: Any) -> None:
        """`app_message` (QoS 1, read by `read_loop`) is acknowledged when settled as taken."""
        self._awaiting_settle[id(app_message)] = app_message.packet_id

    def settle(self, app_message: Any, taken: bool) -> None:
        """The broker is done with `app_message`: acknowledge it (taken) or not."""
        packet_id = self._awaiting_settle.pop(id(app_message), None)
        if packet_id is not None:
            if taken:
                if not self._pubacks:
                    asyncio.get_running_loop().call_soon(self._write_pubacks)
                self._pubacks.append(b"\x40\x02" + packet_id.to_bytes(2, "big"))
            return
        waiter = self._awaiting_handover.pop(id(app_message), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(taken)

    def _write_pubacks(self) -> None:
        data, self._pubacks = b"".join(self._pubacks), []
        if data and self.writer is not None:
            self.writer.write(data)

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        if app_message.direction != INCOMING:
            await super()._handle_qos1_message_flow(app_message)
            return
        if app_message.qos != QOS_1 or app_message.packet_id is None:
            raise ValueError(f"expected a QoS 1 message with a packet id, got QoS {app_message.qos}")
        if app_message.puback_packet:
            raise AMQTTError(f"Message '{app_message.packet_id}' has already been acknowledged")
        if self.session is None:
            raise AMQTTError("Session is not initialized.")
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._awaiting_handover[id(app_message)] = waiter
        try:
            await self.session.delivered_message_queue.put(app_message)
            taken = await waiter
        finally:
            self._awaiting_handover.pop(id(app_message), None)
        if not taken:
            return
        puback = PubackPacket.build(app_message.packet_id)
        await self._send_packet(puback)
        app_message.puback_packet = puback

    async def stop(self) -> None:
        """Close the connection; publishes still waiting are not acknowledged."""
        for waiter in self._awaiting_handover.values():
            if not waiter.done():
                waiter.set_result(False)
        self._awaiting_handover.clear()
        self._awaiting_settle.clear()
        self._pubacks.clear()
        await super().stop()
