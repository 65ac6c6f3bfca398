"""A leaner read loop for the embedded broker's TCP connections (amqtt 0.12).

amqtt's `ProtocolHandler._reader_loop` reads each packet with several awaited
`readexactly` calls under `asyncio.wait_for` (a task per packet on Python 3.11) and then
starts one more task per packet to handle it. For a stream of small publishes that
machinery costs more than the gateway's own work on them. `read_loop` reads what the socket
has (up to `_READ_SIZE` bytes at a time), cuts it into packets itself and handles them:

* PUBLISH, QoS 0 and 1, is parsed here (MQTT 3.1.1: topic, packet id, payload) and put on
  the session's `delivered_message_queue` without a task, after `handler.gate` (the
  backpressure gate; reading stops while it waits). A QoS 0 publish with the DUP flag is
  dropped with a warning, as amqtt does. A QoS 1 publish is registered for its PUBACK,
  which `handler.settle` sends (`gateway.ingress.amqtt_ack`).
* Every other packet (QoS 2 publishes included) is decoded by amqtt's own packet classes and
  handled by the handler's methods, in a task as amqtt does (CONNECT awaited).

What changes against amqtt's loop, and only that:

* a malformed packet (bad remaining length, a reserved type, QoS 3, a topic that is not
  UTF-8, a packet shorter than its headers) closes the connection, where amqtt logged and
  sometimes read on from the middle of the packet;
* so does a packet over `handler.max_packet_bytes`, as soon as its remaining length is read
  (amqtt buffered any size up to MQTT's 256 MB); either is reported to
  `handler.on_protocol_error` with the reason `malformed` or `too_large`;
* amqtt's `PACKET_RECEIVED` plugin event is not fired for QoS 0/1 publishes (the gateway
  runs amqtt without plugins);
* no read timeout (amqtt's broker ignored it anyway).

Only plain asyncio streams (TCP, TLS) take this loop; other transports keep amqtt's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from amqtt.adapters import BufferReader
from amqtt.events import MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.packet import CONNECT, PUBLISH, MQTTFixedHeader
from amqtt.session import IncomingApplicationMessage

from gateway.ingress.mqtt_client import read_varint

log = logging.getLogger("gateway.ingress.embedded")

_READ_SIZE = 256 * 1024
_HANDLERS = {  # packet type -> the handler method amqtt's loop runs in a task
    2: "handle_connack",
    4: "handle_puback",
    5: "handle_pubrec",
    6: "handle_pubrel",
    7: "handle_pubcomp",
    8: "handle_subscribe",
    9: "handle_suback",
    10: "handle_unsubscribe",
    11: "handle_unsuback",
    12: "handle_pingreq",
    13: "handle_pingresp",
    14: "handle_disconnect",
}


class MalformedPacket(Exception):
    """The bytes read are not a well-formed MQTT 3.1.1 packet: the connection is closed."""

    reason = "malformed"


class PacketTooLarge(MalformedPacket):
    """A packet is over the size limit: the connection is closed before it is read."""

    reason = "too_large"


class FastReadHandler(Protocol):
    """What `read_loop` needs of the protocol handler (`AckAfterHandoverHandler`)."""

    session: Any
    plugins_manager: Any
    gate: Callable[[Any], Awaitable[None]] | None
    max_packet_bytes: int
    on_protocol_error: Callable[[str], None] | None
    _reader_ready: asyncio.Event | None
    _reader_stopped: asyncio.Event

    def expect_settle(self, message: Any) -> None: ...
    async def handle_connect(self, packet: Any) -> None: ...
    async def handle_publish(self, packet: Any) -> None: ...
    async def handle_connection_closed(self) -> None: ...
    async def stop(self) -> None: ...


def next_frame(buf: bytes, pos: int, limit: int = 268_435_455) -> tuple[int, int, int] | None:
    """(first byte, body start, body end) of the packet at `pos`, or None if `buf` does not
    hold all of it yet; raises MalformedPacket for a remaining length over 4 bytes and
    PacketTooLarge for a packet (header included) over `limit` bytes."""
    length, start = read_varint(buf, pos + 1, len(buf))
    if length == -2:
        raise MalformedPacket("remaining length longer than 4 bytes")
    if length >= 0 and start - pos + length > limit:
        raise PacketTooLarge(f"a packet of {start - pos + length} bytes, over the limit of {limit}")
    if length < 0 or start + length > len(buf):
        return None
    return buf[pos], start, start + length


def parse_publish(first: int, body: bytes) -> IncomingApplicationMessage:
    """The message of a QoS 0/1/2 PUBLISH `body`; raises MalformedPacket."""
    qos = (first >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if len(body) < 2:
        raise MalformedPacket("PUBLISH shorter than its topic length")
    n = int.from_bytes(body[:2], "big")
    cut = 2 + n + (2 if qos else 0)
    if len(body) < cut:
        raise MalformedPacket("PUBLISH shorter than its variable header")
    try:
        topic = body[2 : 2 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH topic is not UTF-8") from None
    packet_id = int.from_bytes(body[cut - 2 : cut], "big") if qos else None
    return IncomingApplicationMessage(packet_id, topic, qos, body[cut:], bool(first & 1))


async def read_loop(handler: FastReadHandler, stream: asyncio.StreamReader) -> None:
    """Read and handle the connection's packets until it ends; then amqtt's cleanup."""
    running: deque[asyncio.Task[None]] = deque()
    client_id = handler.session.client_id if handler.session is not None else None
    try:
        if handler._reader_ready is not None:
            handler._reader_ready.set()
        buf = b""
        while chunk := await stream.read(_READ_SIZE):
            buf = buf + chunk if buf else chunk
            pos = 0
            while (frame := next_frame(buf, pos, handler.max_packet_bytes)) is not None:
                first, start, pos = frame
                if first >> 4 == PUBLISH and (first >> 1) & 3 != 2:  # QoS 0, 1 (and 3: refused)
                    await _publish(handler, first, buf[start:pos])
                else:
                    await _other(handler, first, buf[start:pos], running)
                while running and running[0].done():
                    running.popleft()
            buf = buf[pos:]
    except asyncio.CancelledError:
        pass
    except MalformedPacket as exc:
        log.warning("closing the connection of %s: %s packet (%s)", client_id, exc.reason.replace("_", " "), exc)
        if handler.on_protocol_error is not None:
            handler.on_protocol_error(exc.reason)
    except Exception as exc:  # what amqtt's loop does with a handler's failure
        log.warning("closing the connection of %s: %r", client_id, exc)
    finally:
        while running:
            running.popleft().cancel()
        try:
            await handler.handle_connection_closed()
        finally:
            handler._reader_stopped.set()
    await handler.stop()


async def _publish(handler: FastReadHandler, first: int, body: bytes) -> None:
    message = parse_publish(first, body)
    if handler.gate is not None:
        await handler.gate(handler.session)
    if message.qos == 0 and first & 0x08:
        log.warning("[MQTT-3.3.1-2] DUP flag set on a QoS 0 publish to %r: ignored", message.topic)
        return
    if message.qos == 1:
        handler.expect_settle(message)
    handler.session.delivered_message_queue.put_nowait(message)


async def _other(handler: FastReadHandler, first: int, body: bytes, running: deque[asyncio.Task[None]]) -> None:
    kind = first >> 4
    if kind in (0, 15):
        raise MalformedPacket(f"reserved packet type {kind}")
    header = MQTTFixedHeader(kind, first & 0x0F, len(body))
    try:
        packet = await packet_class(header).from_stream(BufferReader(body), fixed_header=header)
    except (IndexError, ValueError, UnicodeDecodeError, TypeError) as exc:
        raise MalformedPacket(f"packet type {kind}: {exc!r}") from None
    await handler.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=handler.session)
    if kind == CONNECT:
        await handler.handle_connect(packet)
    elif kind == PUBLISH:  # QoS 2
        running.append(asyncio.create_task(handler.handle_publish(packet)))
    else:
        running.append(asyncio.create_task(getattr(handler, _HANDLERS[kind])(packet)))
