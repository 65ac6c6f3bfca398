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

Each incoming publish already runs in its own task (amqtt's reader creates one per packet),
so waiting here does not stop the connection from being read: the device's in-flight
window and the gateway's `_admit` gate (`gateway.ingress.embedded_broker`) bound how many wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.errors import AMQTTError
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING


class AckAfterHandoverHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped
    """A `BrokerProtocolHandler` whose incoming QoS 1 PUBACK waits for `settle`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # keyed by id(): amqtt's messages have __slots__ and no __weakref__
        self._awaiting_handover: dict[int, asyncio.Future[bool]] = {}

    def settle(self, app_message: Any, taken: bool) -> None:
        """The broker is done with `app_message`: acknowledge it (taken) or not."""
        waiter = self._awaiting_handover.pop(id(app_message), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(taken)

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
        await super().stop()
