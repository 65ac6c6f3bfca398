"""The client ingress: a subscriber of an external MQTT broker (aiomqtt 2.5 over paho-mqtt 2).

Promised:
* Persistent session under a fixed client id (MQTT 5: clean start off plus a Session Expiry
  Interval; 3.1.1: clean session off): QoS 1 messages published while the gateway is away
  arrive when it is back, within `session_expiry`.
* A QoS 1 message is acknowledged (PUBACK) only once the handler returned (it is on the bus).
  If the handler raises, its batch is not acknowledged: the connection is re-opened after a backoff
  and the broker redelivers it and the later unacknowledged ones, in order. At least once: a
  close right after PUBACKs were sent can lose them (closing with unread data resets TCP).
* Order and backpressure: in the broker's order, in batches (below); the next batch is
  taken once the handler returned. The broker holds QoS 1 messages beyond the inflight window
  (MQTT 5 Receive Maximum = `max_inflight`; 3.1.1: the broker's limit): the local queue is
  bounded by it.
* Reconnection with capped, jittered backoff and resubscription (`gateway_broker_reconnects`).
  `wait_started` waits for the first subscription however long the broker is unreachable.
* IngressError: an unloadable CA file; credentials, client id or subscriptions refused
  before the first successful subscription.

Not promised: QoS 0 has no window, so QoS 0 messages pile up in memory while the handler is
slower than the broker. When a connection ends, QoS 0 messages queued locally are handed over
and QoS 1 ones left to the broker's redelivery (`clean_start: true` makes it forget them). On
stop, what is queued locally is handed over for up to `stop_timeout`.

Batches: the messages read so far (up to `_MAX_BATCH` and `_MAX_BATCH_BYTES`) go to
`batch_handler` together (one bus publish per batch; without it, to the handler one by one);
their PUBACKs, in receipt order, go out in one write once it returned.

Private APIs, in `_open_client`, `_consume` and `gateway.ingress.mqtt_client` only: aiomqtt
2.5 acks QoS 1 on queueing and its iterator costs a task plus `asyncio.wait` per message, so
we use the paho client beneath (`Client._client`: manual acks, our reads with `PublishReader`,
PUBACKs with `write_pubacks`) and `Client._disconnected` (resolved when the connection ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from gateway.core.backoff import Backoff
from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.base import BatchHandler, IngressError, MessageHandler
from gateway.ingress.config import ClientIngressConfig
from gateway.ingress.mqtt_client import open_client, write_pubacks
from gateway.security.tls import TlsConfigError, client_context

log = logging.getLogger("gateway.ingress.client")

# CONNACK codes that retrying will not fix: MQTT 3.1.1 (1, 2, 4, 5) and MQTT 5 (0x84 ...).
_REFUSALS = {1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8C}
_STOP_GRACE = 2.0  # seconds for the clean disconnect after the stop_timeout drain
_MAX_BATCH = 1000  # messages per handler call ...
_MAX_BATCH_BYTES = 256 * 1024  # ... and payload bytes: one call runs without yielding to the event loop


class _Incoming(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    mid: int
    received_ns: int


class _HandlerFailed(Exception):
    """The handler raised: reconnect so that the broker redelivers the message."""


class _Refused(aiomqtt.MqttError):
    """The broker refused a subscription."""


class ClientIngress:
    """`Ingress` subscribing to `filters` on an external broker. Construction does no I/O."""

    name = "client"

    def __init__(self, config: ClientIngressConfig, filters: list[str], metrics: Metrics) -> None:
        self.config = config
        self.filters = [config.subscription_filter(f) for f in filters]
        self._metrics = metrics
        self._received = metrics.messages_received.labels(self.name)
        self._connected = False
        self._in_handler = False
        self._subscribed_once = False
        self._started = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stop_future: asyncio.Future[None] | None = None
        self._setup_error: IngressError | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self.batch_handler: BatchHandler | None = None  # preferred to the handler when set

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def wait_started(self) -> None:
        await self._started.wait()
        if self._setup_error is not None:
            raise self._setup_error

    async def run(self, handler: MessageHandler) -> None:
        if self._stop_requested.is_set():
            return
        self._stop_future = asyncio.get_running_loop().create_future()
        try:
            if not self.filters:
                raise IngressError("routes: no topic filter to subscribe to; add at least one route")
            tls = self._tls_context()
        except IngressError as exc:
            raise self._fail(exc) from None
        task = self._task = asyncio.create_task(self._connect_loop(handler, tls), name="ingress:client")
        try:
            await asyncio.wait({task})
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
            self._set_connected(False)
            self._started.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error

    async def stop(self) -> None:
        self._stop_requested.set()
        if self._stop_future is not None and not self._stop_future.done():
            self._stop_future.set_result(None)
        task = self._task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=self.config.stop_timeout.total_seconds())
        if not done and not self._in_handler:  # draining is over; give the clean disconnect a moment
            done, _ = await asyncio.wait({task}, timeout=_STOP_GRACE)
        if not done:
            log.warning("MQTT client did not stop in time; cancelling it (unacknowledged messages are redelivered)")
            task.cancel()
            await asyncio.wait({task})

    # -- connection lifecycle ----------------------------------------------------------------
    async def _connect_loop(self, handler: MessageHandler, tls: ssl.SSLContext | None) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        connections = 0
        while not self._stop_requested.is_set():
            queue: deque[_Incoming] = deque()
            client = self._open_client(tls, queue)
            try:
                async with client:
                    connections += 1
                    if connections > 1:
                        self._metrics.broker_reconnects.inc()
                    self._set_connected(True)
                    await self._subscribe(client)
                    self._subscribed_once = True
                    self._started.set()
                    backoff.reset()
                    log.info("connected to MQTT broker", extra={"broker": self.address, "filters": self.filters})
                    await self._consume(client, queue, self._batches(handler))
                reason = "disconnected"
            except (MqttConnectError, _Refused) as exc:
                if not self._subscribed_once and (isinstance(exc, _Refused) or _code(exc.rc) in _REFUSALS):
                    raise self._fail(IngressError(f"ingress: broker {self.address} refused {exc}")) from None
                reason = f"refused {exc}"
            except aiomqtt.MqttError as exc:
                reason = str(exc) or type(exc).__name__
            except _HandlerFailed:
                reason = "the handler failed; reconnecting so that the broker redelivers the message"
            finally:
                self._set_connected(False)
            await self._hand_over_qos0_leftovers(queue, self._batches(handler))
            if self._stop_requested.is_set():
                break
            delay = backoff.next_delay()
            log.warning(f"MQTT connection to {self.address} ended ({reason}); reconnecting in {delay:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)
        log.info("MQTT client stopped", extra={"broker": self.address})

    def _open_client(self, tls: ssl.SSLContext | None, queue: deque[_Incoming]) -> aiomqtt.Client:
        append = queue.append

        def on_publish(topic: str, payload: bytes, qos: int, mid: int) -> None:
            append(_Incoming(topic, payload, qos, mid, time.time_ns()))
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

        return open_client(self.config, tls, on_publish)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topics: list[tuple[str, int]] = [(f, self.config.qos) for f in self.filters]
        result = await client.subscribe(topics)
        for topic_filter, granted in zip(self.filters, result, strict=False):
            if _code(granted) >= 0x80:
                raise _Refused(f"the subscription to {topic_filter!r}: {granted}")

    # -- messages -----------------------------------------------------------------------------
    def _batches(self, handler: MessageHandler) -> BatchHandler:
        if self.batch_handler is not None:
            return self.batch_handler

        async def one_by_one(messages: Sequence[RawMessage]) -> None:
            for message in messages:
                await handler(message)

        return one_by_one

    async def _consume(self, client: aiomqtt.Client, queue: deque[_Incoming], handler: BatchHandler) -> None:
        inner: Any = client._client
        disconnected: asyncio.Future[None] = client._disconnected
        loop = asyncio.get_running_loop()
        while not self._stop_requested.is_set():
            if disconnected.done():
                return disconnected.result()  # raises the reason of an unexpected disconnection
            if not queue:
                assert self._stop_future is not None
                self._wake = wake = loop.create_future()
                try:
                    await asyncio.wait({wake, disconnected, self._stop_future}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._wake = None
                    wake.cancel()
                continue
            await self._handle(handler, _take(queue), inner)
        # Stopping: hand over (and acknowledge) what is queued now, for up to stop_timeout.
        deadline = loop.time() + self.config.stop_timeout.total_seconds()
        for _ in range(len(queue)):  # bounded by the queue now (batches may take later arrivals) and the deadline
            if not queue or disconnected.done() or loop.time() > deadline:
                return None
            try:
                await self._handle(handler, _take(queue), inner)
            except _HandlerFailed:
                return None

    async def _handle(self, handler: BatchHandler, items: list[_Incoming], inner: Any) -> None:
        self._received.inc(len(items))
        self._in_handler = True
        try:
            await handler([RawMessage(i.topic, i.payload, i.qos, i.received_ns, None) for i in items])
        except Exception as exc:
            log.exception("handler failed; messages not acknowledged", extra={"messages": len(items)})
            raise _HandlerFailed from exc
        finally:
            self._in_handler = False
        if inner is not None:
            write_pubacks(inner, [i.mid for i in items if i.qos])

    async def _hand_over_qos0_leftovers(self, queue: deque[_Incoming], handler: BatchHandler) -> None:
        leftovers = deque(item for item in queue if item.qos == 0)
        queue.clear()
        while leftovers:
            with contextlib.suppress(_HandlerFailed):
                await self._handle(handler, _take(leftovers), None)

    # -- helpers ------------------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext | None:
        c = self.config
        try:
            return client_context(c.ca_file, c.cert_file, c.key_file) if c.tls else None
        except TlsConfigError as exc:
            raise IngressError(str(exc)) from None

    def _fail(self, error: IngressError) -> IngressError:
        self._setup_error = error
        self._started.set()
        return error

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self._metrics.broker_connected.set(1 if value else 0)


def _code(rc: Any) -> int:
    """The numeric value of a paho reason code, granted QoS or CONNACK code."""
    return int(getattr(rc, "value", rc))


def _take(queue: deque[_Incoming]) -> list[_Incoming]:
    """The next batch: up to `_MAX_BATCH` messages and `_MAX_BATCH_BYTES` of payload (at least one)."""
    batch = [queue.popleft()]
    size = len(batch[0].payload)
    while queue and len(batch) < _MAX_BATCH and size + len(queue[0].payload) <= _MAX_BATCH_BYTES:
        item = queue.popleft()
        size += len(item.payload)
        batch.append(item)
    return batch
