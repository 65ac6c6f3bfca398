"""The embedded ingress: an amqtt 0.12 MQTT broker running inside the gateway process.

Devices connect to the gateway itself. Publishes are taken inside the broker
(`gateway.ingress.embedded_broker.GatewayBroker`, an `amqtt.broker.Broker` subclass), not
by subscribing to it over a socket: every valid, permitted PUBLISH is handed to the gateway
as a `RawMessage` (topic, payload, QoS, receipt time, publishing client id), then the broker
forwards it as usual to any device subscribed to it (devices may subscribe to each other).

What is promised:
* Order: per connection, the handler sees messages in the order the device sent them.
* Batches: with `batch_handler` set (the gateway sets `gateway.ingest.handle_batch`), each
  hand-over takes the publishes already read from the connection and waiting (up to
  `_MAX_BATCH`, at most `max_queued_per_connection`, and about 256 KiB of payload) and
  gives them to `batch_handler` in one call: one bus commit for the batch instead of one per
  message. Nothing waits to fill a batch: a device with one publish in flight gets batches of
  one; one with a large QoS 1 in-flight window (or QoS 0 bursts) gets what arrived during the
  previous commit. Without `batch_handler`, the handler gets them one by one.
* Backpressure: at most `max_queued_per_connection` publishes read from one connection wait
  for, or are in, a hand-over (plus what one socket read buffer, about 128 KiB, can hold);
  beyond that the gateway stops reading the connection, and TCP slows the device down. A
  device blocked longer than its keep-alive may be disconnected by its own client library.
* Acknowledgement: a QoS 1 publish is acknowledged (PUBACK) only after the handler returned
  for its whole batch, that is once the message is on the bus (`gateway.ingress.amqtt_ack`),
  and in the order the device sent them; a batch the handler failed on, or a publish still
  queued when the connection or the gateway stops, is not acknowledged, and the device sends
  it again after it reconnects (some of a failed batch may already be on the bus: at least once).
* Handler errors are logged; the messages are still forwarded to subscribed devices.
* An invalid topic (empty, wildcards, `$...`) closes the connection, as amqtt does; the
  publishes before it in the batch are handed over first.
* Stop: new connections and new publishes are refused first; publishes already read keep
  being handed to the handler for up to `stop_timeout`; what is left after that is logged.

What is NOT promised (amqtt's limits):
* QoS 2 publishes are acknowledged by amqtt on receipt (PUBREC); use QoS 1 for telemetry.
  QoS 0 publishes still queued at a crash or disconnect are lost (as QoS 0 allows).
* Messages forwarded to subscribed devices are buffered by amqtt without a bound.

Security (`ingress.auth`, `ingress.acl`, `ingress.tls`; `gateway.security.amqtt_broker`):
CONNECTs are authenticated (password file, client certificate CN, or anonymous where
allowed) before amqtt touches any session; publishes and subscriptions are checked by the
ACL, and a refused publish is counted, logged, acknowledged (MQTT 3.1.1 has no refusal) and
never handed to the handler; the rest of its batch goes through. A message from an
authenticated client reaches the handler as an `AuthenticatedMessage` carrying its identity.

`run` sets amqtt's (noisy) loggers to WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from amqtt.errors import BrokerError

from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.base import BatchHandler, IngressError, MessageHandler
from gateway.ingress.config import EmbeddedIngressConfig
from gateway.ingress.embedded_broker import GatewayBroker
from gateway.security.amqtt_broker import identity_of
from gateway.security.broker_auth import BrokerSecurity
from gateway.security.identity import AuthenticatedMessage
from gateway.security.passwords import PasswordFileError
from gateway.security.tls import TlsConfigError, server_context

log = logging.getLogger("gateway.ingress.embedded")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_BATCH = 500  # publishes of one connection per batch handler call
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
        self.batch_handler: BatchHandler | None = None  # preferred to the handler when set
        self._broker: GatewayBroker | None = None
        self._listening = False
        self._closing = False  # stop requested: read no further publishes
        self._accepting = True  # False once stop gave up: no further handler calls
        self._busy: dict[asyncio.Task[Any], None] = {}  # connection tasks inside a handler call
        self._started = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
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
            broker = GatewayBroker(self._broker_config(), self._security, tls, self)
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

    # -- inside the broker (`gateway.ingress.embedded_broker.Intake`) ------------------------
    @property
    def max_queued(self) -> int:
        return self.config.max_queued_per_connection

    @property
    def batch_limit(self) -> int:
        return min(_MAX_BATCH, self.config.max_queued_per_connection) if self.batch_handler is not None else 1

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def max_packet_bytes(self) -> int:
        return self.config.max_packet_bytes

    def protocol_error(self, reason: str) -> None:
        self._metrics.broker_protocol_errors.labels(reason).inc()

    async def hand_over(self, session: Any, messages: Sequence[Any]) -> bool:
        """Hand valid, permitted publishes of one connection to the handler, in order; True once
        it has taken all of them. Never raises."""
        if not self._accepting or self._handler is None:
            log.warning(
                "publishes arrived after stop; not handed to the pipeline",
                extra={"topic": messages[0].topic, "messages": len(messages)},
            )
            return False
        identity = identity_of(session)
        restricted = identity is not None and identity.restricted
        raws: list[RawMessage] = []
        for message in messages:
            packet = message.publish_packet
            stamp = packet.protocol_ts if packet is not None else None
            received_ns = (stamp - _EPOCH) // _MICROSECOND * 1000 if stamp is not None else time.time_ns()
            args = (message.topic, bytes(message.data), message.qos or 0, received_ns, session.client_id)
            raws.append(AuthenticatedMessage(*args, identity) if restricted else RawMessage(*args))
        self._received.inc(len(raws))
        task = asyncio.current_task()
        if task is not None:
            self._busy[task] = None
        try:
            if self.batch_handler is not None:
                await self.batch_handler(raws)
            else:
                for raw in raws:
                    await self._handler(raw)
            return True
        except Exception:
            log.exception(
                "handler failed; message(s) not taken",
                extra={"topic": raws[0].topic, "client_id": raws[0].client_id, "messages": len(raws)},
            )
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

    async def _shutdown(self, broker: GatewayBroker, drain: bool) -> None:
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

    async def _drain(self, broker: GatewayBroker) -> None:
        """Let publishes already read reach the handler, up to `stop_timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stop_timeout.total_seconds()
        quiet = 0
        while quiet < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
            quiet = quiet + 1 if broker.queued() == 0 and not self._busy else 0
