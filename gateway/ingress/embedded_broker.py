"""`GatewayBroker`: the embedded ingress's amqtt broker, with the backpressure gate and the
batched hand-over of publishes to the gateway.

amqtt 0.12 runs one message loop per connection (`Broker._client_message_loop`): it awaits
`mqtt_deliver_next_message()` (a `get()` on the session's `delivered_message_queue`, which
every incoming publish is put on once read, and for QoS 1 before its PUBACK) and calls
`_handle_message_delivery` for the message. That method is overridden here: besides the
message it was given, it takes the publishes already queued on the connection, without
waiting (`get_nowait` on the same queue: the same items in the same order as the next
`mqtt_deliver_next_message` calls would return; the queue is unbounded, so no putter waits
on it), up to `Intake.batch_limit` messages, until `_MAX_BATCH_BYTES` of payload is reached, and
stops after a message with an invalid topic. Then, for the batch:

1. each message, in order: `MESSAGE_RECEIVED`; an invalid topic closes the connection (what
   precedes it in the batch is still handed over and settled, nothing after it was taken);
   a publish the ACL refuses is logged, acknowledged and dropped (MQTT 3.1.1 has no refusal);
2. the permitted ones go to `Intake.hand_over` together (one bus commit for the batch);
3. every message is settled in order (`AckAfterHandoverHandler.settle`): the permitted ones
   taken only if the hand-over returned True, so a failed batch is not acknowledged at all;
4. each permitted message is forwarded to subscribed devices and retained as amqtt does.

A disconnect does not drop what the connection had queued: the loop hands it over after
amqtt's, and until it has, the session is kept from amqtt's session expiry (a pass every
second that clears the queues of disconnected clean or anonymous sessions) and from being
deleted by a new connection with the same client id (which takes the id at once).

Backpressure: a batch counts against `Intake.max_queued` until it is settled (the gate
waits while queued + held reaches it), then the gate is signalled. The gate runs in the
connection's reader before a publish is queued: `gateway.ingress.amqtt_reader.read_loop`
awaits it as `handler.gate` (TCP and TLS), amqtt's own loop through the `PACKET_RECEIVED`
event (other transports).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from amqtt.contexts import Action
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt.publish import PublishPacket

from gateway.ingress.amqtt_ack import AckAfterHandoverHandler
from gateway.security.amqtt_broker import SecureBroker
from gateway.security.broker_auth import BrokerSecurity

_SPACE_KEY = "gateway.ingress.space"  # per-session asyncio.Event: the session's queue has room again
_HELD_KEY = "gateway.ingress.held"  # per-session int: publishes taken from the queue and not yet settled
_DRAINING_KEY = "gateway.ingress.draining"  # per-session bool: its loop still hands over what was queued
_MAX_BATCH_BYTES = 256 * 1024  # payload per hand-over: decoding a batch runs without yielding


class Intake(Protocol):
    """What the broker needs from the ingress (`gateway.ingress.embedded.EmbeddedIngress`)."""

    @property
    def max_queued(self) -> int: ...  # publishes of one connection read and not yet settled

    @property
    def batch_limit(self) -> int: ...  # publishes handed over together, at most

    @property
    def closing(self) -> bool: ...  # read no further publishes

    @property
    def max_packet_bytes(self) -> int: ...  # a bigger packet closes the connection

    def protocol_error(self, reason: str) -> None: ...  # a connection was closed for `reason`

    async def hand_over(self, session: Any, messages: Sequence[Any]) -> bool: ...  # True: all taken


def valid_topic(topic: str | None) -> bool:
    """A topic a device may publish to (amqtt's check)."""
    if not topic:
        return False
    return not ("#" in topic or "+" in topic or topic.startswith("$"))


def _settle(handler: Any, app_message: Any, taken: bool) -> None:
    """Release (taken) or withhold the QoS 1 PUBACK (`gateway.ingress.amqtt_ack`)."""
    if isinstance(handler, AckAfterHandoverHandler):
        handler.settle(app_message, taken)


class GatewayBroker(SecureBroker):
    """The secured amqtt broker with two hooks: the backpressure gate and the batched hand-over."""

    def __init__(
        self, config: dict[str, Any], security: BrokerSecurity, tls: ssl.SSLContext | None, intake: Intake
    ) -> None:
        super().__init__(config, security, tls)
        self._intake = intake
        self._never = asyncio.Event()
        fire_event: Callable[..., Awaitable[None]] = self.plugins_manager.fire_event

        async def gated_fire_event(event_name: Any, *, wait: bool = False, **kwargs: Any) -> None:
            # The reader loop awaits this after reading each packet: blocking here stops reading.
            if event_name == MQTTEvents.PACKET_RECEIVED and isinstance(kwargs.get("packet"), PublishPacket):
                await self._admit(kwargs.get("session"))
            await fire_event(event_name, wait=wait, **kwargs)

        self.plugins_manager.fire_event = gated_fire_event

    def close_listeners(self) -> None:
        for server in self._servers.values():
            if server.instance is not None:
                server.instance.close()

    def queued(self) -> int:
        """Publishes read from devices (connected, or disconnected with their queue still being handed
        over) and not yet taken for the handler."""
        return sum(
            s.delivered_message_queue.qsize()
            for s, _ in self._sessions.values()
            if s.transitions.state == "connected" or s.attributes.get(_DRAINING_KEY)
        )

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        handler, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        handler.gate = self._admit  # the fast read loop's gate (gateway.ingress.amqtt_reader)
        handler.max_packet_bytes = self._intake.max_packet_bytes
        handler.on_protocol_error = self._intake.protocol_error
        return handler, session

    async def _admit(self, session: Any) -> None:
        """Runs in a connection's reader after it read a publish, before it is queued."""
        if self._intake.closing:
            await self._never.wait()  # until the broker's shutdown cancels this reader
        queue = session.delivered_message_queue
        while queue.qsize() + session.attributes.get(_HELD_KEY, 0) >= self._intake.max_queued:
            space = session.attributes.setdefault(_SPACE_KEY, asyncio.Event())
            space.clear()
            await space.wait()

    async def _client_message_loop(self, client_session: Any, handler: Any) -> None:
        """amqtt's per-connection loop, then the hand-over of what the connection had queued.

        amqtt ends the loop at a disconnect and drops the publishes still queued: QoS 0 ones
        would be lost, QoS 1 ones (not acknowledged) depend on the device resending. Here
        they are handed over too (also while the ingress drains at stop; once it no longer
        accepts, they are refused and counted as left): a QoS 1 one may then arrive twice,
        which the stores absorb (at least once)."""
        client_session.attributes[_DRAINING_KEY] = True
        try:
            await super()._client_message_loop(client_session, handler)
            queue = client_session.delivered_message_queue
            while not queue.empty():  # after the ingress stopped accepting, hand_over refuses them fast
                first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                first.set_result(queue.get_nowait())
                await self._handle_message_delivery(client_session, handler, first)
        finally:
            client_session.attributes[_DRAINING_KEY] = False

    def _draining(self, client_id: str) -> Any:
        """The session of `client_id` if its loop is still handing over its queue (not when stopping)."""
        session = self._sessions.get(client_id, (None, None))[0]
        if session is not None and session.attributes.get(_DRAINING_KEY) and not self._intake.closing:
            return session
        return None

    async def _cleanup_session(self, client_id: str) -> None:
        if self._draining(client_id) is None:  # else: a later expiry pass removes it
            await super()._cleanup_session(client_id)

    async def _delete_session(self, client_id: str) -> None:
        session = self._draining(client_id)
        if session is None:
            await super()._delete_session(client_id)
            return
        self._sessions.pop(client_id, None)  # the new connection takes the id; this one's queue is still handed over
        await self._del_all_subscriptions(session)

    def _take(self, session: Any, handler: Any, first: Any) -> list[Any]:
        """`first` and the publishes queued behind it (see the module docstring). Does not yield."""
        batch = [first]
        size = len(first.data or b"")
        queue = session.delivered_message_queue
        limit = self._intake.batch_limit
        while len(batch) < limit and size < _MAX_BATCH_BYTES and valid_topic(batch[-1].topic) and not queue.empty():
            batch.append(queue.get_nowait())
            size += len(batch[-1].data or b"")
        return batch

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> bool:
        # amqtt 0.12's body, for a batch, with the hand-over to the gateway before the broadcast.
        first = wait_deliver.result()
        client_id = client_session.client_id
        if first is None:
            await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_RECEIVED, client_id=client_id, message=None)
            return True
        batch = self._take(client_session, handler, first)
        attributes = client_session.attributes
        attributes[_HELD_KEY] = len(batch)
        keep_open = True
        refused: set[int] = set()
        permitted: list[Any] = []
        try:
            for message in batch:
                await self.plugins_manager.fire_event(
                    BrokerEvents.MESSAGE_RECEIVED, client_id=client_id, message=message
                )
                if not valid_topic(message.topic):  # the last of the batch (`_take`)
                    self.logger.warning(f"{client_id} invalid topic {message.topic!r} in PUBLISH, closing connection")
                    batch.pop()
                    keep_open = False
                    break
                if await self._topic_filtering(client_session, topic=message.topic, action=Action.PUBLISH):
                    permitted.append(message)
                else:
                    self.logger.info(f"{client_id} not allowed to publish to topic {message.topic}.")
                    refused.add(id(message))
            taken = await self._intake.hand_over(client_session, permitted) if permitted else True
            for message in batch:  # in order: PUBACKs go out in the order the device sent the publishes
                _settle(handler, message, taken or id(message) in refused)  # refused: acknowledge and drop
        finally:
            attributes[_HELD_KEY] = 0
            space = attributes.get(_SPACE_KEY)
            if space is not None:
                space.set()
        for message in permitted:
            await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_BROADCAST, client_id=client_id, message=message)
            if self._subscriptions:  # nobody subscribed: skip amqtt's per-message broadcast task
                await self._broadcast_message(client_session, message.topic, message.data)
            if message.retain:
                await self.retain_message(client_session, message.topic, message.data, message.qos)
        return keep_open
