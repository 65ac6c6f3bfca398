"""The embedded ingress: an amqtt 0.12 MQTT broker running inside the gateway process.

Devices connect to the gateway itself. Publishes are taken inside the broker (a subclass of
`amqtt.broker.Broker`), not by subscribing to it over a socket: for every valid, permitted
PUBLISH the handler is awaited with a `RawMessage` (topic, payload, QoS, receipt time,
publishing client id), then the broker forwards the message as usual to any device
subscribed to it (devices may subscribe to each other).

What is promised:
* Order: per connection, the handler sees messages in the order the device sent them.
* Backpressure: at most `max_queued_per_connection` publishes read from one connection wait
  for the handler (plus what one socket read buffer, about 128 KiB, can hold); beyond that
  the gateway stops reading the connection, and TCP slows the device down. A device blocked
  longer than its keep-alive may be disconnected by its own client library.
* Acknowledgement: a QoS 1 publish is acknowledged (PUBACK) only after the handler returned,
  that is once the message is on the bus (`gateway.ingress.amqtt_ack`); a publish the handler
  failed on, or that is still queued when the connection or the gateway stops, is not
  acknowledged, and the device sends it again after it reconnects.
* Handler errors are logged; the message is still forwarded to subscribed devices.
* Stop: new connections and new publishes are refused first; publishes already read keep
  being handed to the handler for up to `stop_timeout`; what is left after that is logged.

What is NOT promised (amqtt's limits):
* QoS 2 publishes are acknowledged by amqtt on receipt (PUBREC); use QoS 1 for telemetry.
  QoS 0 publishes still queued at a crash or disconnect are lost (as QoS 0 allows).
* Messages forwarded to subscribed devices are buffered by amqtt without a bound.

Security (`ingress.auth`, `ingress.acl`, `ingress.tls`; `gateway.security.amqtt_broker`):
CONNECTs are authenticated (password file, client certificate CN, or anonymous where
allowed) before amqtt touches any session; publishes and subscriptions are checked by the
ACL, and a refused publish is counted, logged and never handed to the handler. A message
from an authenticated client reaches the handler as an `AuthenticatedMessage` carrying its
identity.

`run` sets amqtt's (noisy) loggers to WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from amqtt.contexts import Action
from amqtt.errors import BrokerError
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt.publish import PublishPacket

from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.amqtt_ack import AckAfterHandoverHandler
from gateway.ingress.base import IngressError, MessageHandler
from gateway.ingress.config import EmbeddedIngressConfig
from gateway.security.amqtt_broker import SecureBroker, identity_of
from gateway.security.broker_auth import BrokerSecurity
from gateway.security.identity import AuthenticatedMessage
from gateway.security.passwords import PasswordFileError
from gateway.security.tls import TlsConfigError, server_context

log = logging.getLogger("gateway.ingress.embedded")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SPACE_KEY = "gateway.ingress.space"  # per-session asyncio.Event: the session's queue has room again
_AMQTT_LOGGERS = ("amqtt", "transitions")


class EmbeddedIngress:
    """`Ingress` that is an MQTT broker. Construction does no I/O; `run` opens the port."""

    name = "embedded"

    def __init__(self, config: EmbeddedIngressConfig, metrics: Metrics) -> None:
        self.config = config
        self._metrics = metrics
        self._received = metrics.messages_received.labels(self.name)
        self._security = BrokerSecurity(config.auth, config.acl, config.host, metrics)
        self._handler: MessageHandler | None = None
        self._broker: _GatewayBroker | None = None
        self._listening = False
        self._closing = False  # stop requested: read no further publishes
        self._accepting = True  # False once stop gave up: no further handler calls
        self._busy: dict[asyncio.Task[Any], None] = {}  # connection tasks inside a handler call
        self._started = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._never = asyncio.Event()
        self._setup_error: IngressError | None = None
        self._running = False

    @property
    def connected(self) -> bool:
        return self._listening

    @property
    def address(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{host}:{self.config.port}"

    async def wait_started(self) -> None:
        await self._started.wait()
        if self._setup_error is not None:
            raise self._setup_error

    async def run(self, handler: MessageHandler) -> None:
        if self._stop_requested.is_set():
            return
        self._handler = handler
        self._running = True
        for name in _AMQTT_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            await self._check_port()
            try:
                self._security.load()
                tls = server_context(self.config.tls) if self.config.tls.enabled else None
            except PasswordFileError as exc:
                raise IngressError(f"ingress.auth.password_file: {exc}") from None
            except TlsConfigError as exc:
                raise IngressError(str(exc)) from None
            broker = _GatewayBroker(self._broker_config(), self, tls)
            try:
                await broker.start()
            except BrokerError as exc:
                raise IngressError(f"ingress: cannot start the embedded broker on {self.address}: {exc}") from None
        except IngressError as exc:
            self._setup_error = exc
            self._started.set()
            self._stopped.set()
            raise
        self._broker = broker
        self._listening = True
        self._metrics.broker_connected.set(1)
        self._started.set()
        log.info("embedded MQTT broker listening", extra={"address": self.address})
        drain = False
        try:
            await self._stop_requested.wait()
            drain = True
        finally:
            await self._shutdown(broker, drain)

    async def stop(self) -> None:
        self._stop_requested.set()
        if self._running:
            await self._stopped.wait()

    # -- inside the broker ------------------------------------------------------------------
    async def _admit(self, session: Any, packet: Any) -> None:
        """Runs in a connection's reader after it read a packet, before amqtt handles it."""
        if not isinstance(packet, PublishPacket):
            return
        if self._closing:
            await self._never.wait()  # until the broker's shutdown cancels this reader
        queue = session.delivered_message_queue
        while queue.qsize() >= self.config.max_queued_per_connection:
            space = session.attributes.setdefault(_SPACE_KEY, asyncio.Event())
            space.clear()
            await space.wait()

    async def _deliver(self, session: Any, message: Any) -> bool:
        """Hand one valid, permitted publish to the handler; True once it has taken it. Never raises."""
        if not self._accepting or self._handler is None:
            log.warning("publish arrived after stop; not handed to the pipeline", extra={"topic": message.topic})
            return False
        packet = message.publish_packet
        stamp = packet.protocol_ts if packet is not None else None
        received_ns = (stamp - _EPOCH) // _MICROSECOND * 1000 if stamp is not None else time.time_ns()
        identity = identity_of(session)
        raw: RawMessage
        if identity is not None and identity.restricted:
            raw = AuthenticatedMessage(
                message.topic, bytes(message.data), message.qos or 0, received_ns, session.client_id, identity
            )
        else:
            raw = RawMessage(message.topic, bytes(message.data), message.qos or 0, received_ns, session.client_id)
        self._received.inc()
        task = asyncio.current_task()
        if task is not None:
            self._busy[task] = None
        try:
            await self._handler(raw)
            return True
        except Exception:
            log.exception("handler failed; message not taken", extra={"topic": raw.topic, "client_id": raw.client_id})
            return False
        finally:
            if task is not None:
                self._busy.pop(task, None)

    # -- setup and shutdown -----------------------------------------------------------------
    def _broker_config(self) -> dict[str, Any]:
        c = self.config
        listener = {
            "type": "tcp",
            "bind": f"{c.host}:{c.port}",
            "max_connections": c.max_connections,
            "ssl": c.tls.enabled,
        }
        # No amqtt plugins: authentication and the ACL are SecureBroker's own (see its docstring).
        return {"listeners": {"default": listener}, "plugins": {}}

    async def _check_port(self) -> None:
        """Bind the address once ourselves, so that the operator gets a precise error."""
        host, port = self.config.host, self.config.port
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise IngressError(f"ingress.host: cannot resolve {host!r}: {exc.strerror}") from None
        for family, kind, proto, _, sockaddr in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(sockaddr)
                except OSError as exc:
                    key = "ingress.host" if exc.errno == errno.EADDRNOTAVAIL else "ingress.port"
                    reason = (exc.strerror or str(exc)).lower()
                    raise IngressError(f"{key}: cannot listen on {self.address}: {reason}") from None

    async def _shutdown(self, broker: _GatewayBroker, drain: bool) -> None:
        self._closing = True
        try:
            broker.close_listeners()
            if drain:
                await self._drain(broker)
        finally:
            self._accepting = False
            left = broker.queued()
            for task in list(self._busy):
                task.cancel()
            if left or self._busy:
                log.error(
                    "stopped with publishes not handed to the pipeline (QoS 1: not acknowledged, devices send "
                    "them again after reconnecting; QoS 0: lost)",
                    extra={"queued": left, "in_handler": len(self._busy)},
                )
            with contextlib.suppress(Exception):
                await broker.shutdown()
            self._listening = False
            self._metrics.broker_connected.set(0)
            self._stopped.set()
            log.info("embedded MQTT broker stopped")

    async def _drain(self, broker: _GatewayBroker) -> None:
        """Let publishes already read reach the handler, up to `stop_timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stop_timeout.total_seconds()
        quiet = 0
        while quiet < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
            quiet = quiet + 1 if broker.queued() == 0 and not self._busy else 0


def _settle(handler: Any, app_message: Any, taken: bool) -> None:
    """Release (taken) or withhold the QoS 1 PUBACK (`gateway.ingress.amqtt_ack`)."""
    if isinstance(handler, AckAfterHandoverHandler):
        handler.settle(app_message, taken)


class _GatewayBroker(SecureBroker):
    """The secured amqtt broker with two hooks: the backpressure gate and the hand-over to the gateway."""

    def __init__(self, config: dict[str, Any], ingress: EmbeddedIngress, tls: ssl.SSLContext | None) -> None:
        super().__init__(config, ingress._security, tls)
        self._ingress = ingress
        fire_event: Callable[..., Awaitable[None]] = self.plugins_manager.fire_event

        async def gated_fire_event(event_name: Any, *, wait: bool = False, **kwargs: Any) -> None:
            # The reader loop awaits this after reading each packet: blocking here stops reading.
            if event_name == MQTTEvents.PACKET_RECEIVED:
                await ingress._admit(kwargs.get("session"), kwargs.get("packet"))
            await fire_event(event_name, wait=wait, **kwargs)

        self.plugins_manager.fire_event = gated_fire_event

    def close_listeners(self) -> None:
        for server in self._servers.values():
            if server.instance is not None:
                server.instance.close()

    def queued(self) -> int:
        """Publishes read from connected devices and not yet taken for the handler."""
        return sum(
            s.delivered_message_queue.qsize() for s, _ in self._sessions.values() if s.transitions.state == "connected"
        )

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> bool:
        # amqtt 0.12's body, with the hand-over to the gateway before the broadcast.
        app_message = wait_deliver.result()
        space = client_session.attributes.get(_SPACE_KEY)
        if space is not None:
            space.set()
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED, client_id=client_session.client_id, message=app_message
        )
        if app_message is None:
            return True
        topic = app_message.topic
        if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
            self.logger.warning(f"{client_session.client_id} invalid topic {topic!r} in PUBLISH, closing connection")
            return False
        if not await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH):
            self.logger.info(f"{client_session.client_id} not allowed to publish to topic {topic}.")
            _settle(handler, app_message, True)  # MQTT 3.1.1 can only acknowledge and drop it
            return True
        _settle(handler, app_message, await self._ingress._deliver(client_session, app_message))
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST, client_id=client_session.client_id, message=app_message
        )
        if self._subscriptions:  # nobody subscribed: skip amqtt's per-message broadcast task
            await self._broadcast_message(client_session, topic, app_message.data)
        if app_message.publish_packet and app_message.publish_packet.retain_flag:
            await self.retain_message(client_session, topic, app_message.data, app_message.qos)
        return True
