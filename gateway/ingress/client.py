"""The client ingress: a subscriber of an external MQTT broker (aiomqtt 2.5 over paho-mqtt 2).

Promised:
* Persistent session under a fixed client id (MQTT 5: clean start off plus a Session Expiry
  Interval; 3.1.1: clean session off): QoS 1 messages published while the gateway is away
  arrive when it is back, within `session_expiry`.
* A QoS 1 message is acknowledged (PUBACK) only once the handler returned (it is on the bus).
  If the handler raises, its batch is not acknowledged, nor any later one: the connection is
  re-opened after a backoff and the broker redelivers them, in order. At least once: a close
  right after PUBACKs were sent can lose them (closing with unread data resets TCP), and
  batches handed over after a failed one may be on the bus already.
* Order and backpressure: in the broker's order, in batches (below), handed over one at a
  time. The broker holds QoS 1 messages beyond the inflight window (MQTT 5 Receive Maximum =
  `max_inflight`; 3.1.1: the broker's limit). QoS 0 has no window: the local queue is bounded
  by `gateway.ingress.read_gate` (reads pause above 8 MiB of queued payload, counted in
  `gateway_ingress_read_pauses_total`) and the broker holds what follows, under its limits.
* Reconnection with capped, jittered backoff and resubscription (`gateway_broker_reconnects`).
  `wait_started` waits for the first subscription however long the broker is unreachable.
* IngressError: an unloadable CA file; credentials, client id or subscriptions refused
  before the first successful subscription.

Not promised: that the broker keeps every QoS 0 message while reads pause (its limits decide,
and it counts what it drops). When a connection ends, QoS 0 messages queued locally are
handed over and QoS 1 ones left to the broker's redelivery (`clean_start: true` makes it
forget them). On stop, what is queued locally is handed over for up to `stop_timeout`.

Batches: the messages read so far (up to `MAX_BATCH` and `MAX_BATCH_BYTES`) go to the
handler together: `staged_handler` (the gateway's `hand_over_batch`: returns once the batch is
on the bus, with a future for its commit), else `batch_handler`, else the handler one by one.
Pipelined (`gateway.ingress.client_pipeline`): while up to `pipeline_depth` batches commit,
the next one is handed over; each batch's PUBACKs, in receipt order, go out in one write once
its commit is done and every older batch's PUBACKs went out. At a moderate rate a batch of
fewer than `LINGER_ENOUGH` messages waits `linger` from when the consumer first saw it (a small socket
read pauses reads as long, see `gateway.ingress.read_gate`), so that reads, commits and PUBACKs
are paid per several messages; `ClientIngressConfig.effective_linger` says where it applies.

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
from functools import partial
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from gateway.core.backoff import Backoff
from gateway.core.bus import resolved
from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.base import BatchHandler, IngressError, MessageHandler, StagedBatchHandler
from gateway.ingress.client_pipeline import BatchFlow, HandlerFailed, Incoming, take
from gateway.ingress.config import ClientIngressConfig
from gateway.ingress.mqtt_client import open_client
from gateway.ingress.read_gate import ReadGate
from gateway.security.tls import TlsConfigError, client_context

log = logging.getLogger("gateway.ingress.client")

# CONNACK codes that retrying will not fix: MQTT 3.1.1 (1, 2, 4, 5) and MQTT 5 (0x84 ...).
_REFUSALS = {1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8C}
_STOP_GRACE = 2.0  # seconds for the clean disconnect after the stop_timeout drain
PIPELINE_DEPTH = 4  # batches awaiting their commit at once (see gateway.ingress.client_pipeline)
LINGER_ENOUGH = 256  # queued messages that are a batch worth handing over without waiting (`linger`)


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
        self._read_pauses = metrics.ingress_read_pauses
        self._gate: ReadGate | None = None  # the current connection's
        self._connected = False
        self._flow: BatchFlow | None = None  # the current connection's (or leftovers')
        self._subscribed_once = False
        self._started = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stop_future: asyncio.Future[None] | None = None
        self._setup_error: IngressError | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self.batch_handler: BatchHandler | None = None  # preferred to the handler when set
        self.staged_handler: StagedBatchHandler | None = None  # preferred to both when set
        self.pipeline_depth = PIPELINE_DEPTH

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
        busy = self._flow is not None and self._flow.busy
        if not done and not busy:  # draining is over; give the clean disconnect a moment
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
            queue: deque[Incoming] = deque()
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
            except HandlerFailed:
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

    def _open_client(self, tls: ssl.SSLContext | None, queue: deque[Incoming]) -> aiomqtt.Client:
        append = queue.append
        incoming = partial(tuple.__new__, Incoming)  # Incoming(...) without its Python-level __new__

        def on_publish(topic: str, payload: bytes, qos: int, mid: int) -> None:
            # Its own receive time per message: a reading without a timestamp takes it, and two
            # of one device sharing one (say, one per socket read) would be one point in a store.
            append(incoming((topic, payload, qos, mid, time.time_ns())))
            gate.added(len(payload))
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

        client = open_client(self.config, tls, on_publish, on_read=lambda nbytes: gate.read(nbytes))
        disconnected: asyncio.Future[None] = client._disconnected

        def fail(exc: BaseException) -> None:
            if not disconnected.done():
                disconnected.set_exception(exc)

        linger = self.config.effective_linger().total_seconds()
        gate = self._gate = ReadGate(client._client, fail, self._read_pauses.inc, linger=linger)
        return client

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topics: list[tuple[str, int]] = [(f, self.config.qos) for f in self.filters]
        result = await client.subscribe(topics)
        for topic_filter, granted in zip(self.filters, result, strict=False):
            if _code(granted) >= 0x80:
                raise _Refused(f"the subscription to {topic_filter!r}: {granted}")

    # -- messages -----------------------------------------------------------------------------
    def _batches(self, handler: MessageHandler) -> StagedBatchHandler:
        if self.staged_handler is not None:
            return self.staged_handler
        batch_handler = self.batch_handler

        async def in_one_step(messages: Sequence[RawMessage]) -> asyncio.Future[None]:
            if batch_handler is not None:
                await batch_handler(messages)
            else:
                for message in messages:
                    await handler(message)
            return resolved()

        return in_one_step

    async def _consume(self, client: aiomqtt.Client, queue: deque[Incoming], handler: StagedBatchHandler) -> None:
        disconnected: asyncio.Future[None] = client._disconnected
        # retrieved here too: a connection lost after this loop returned (stopping) is not an unhandled error
        disconnected.add_done_callback(lambda f: f.cancelled() or f.exception())
        loop = asyncio.get_running_loop()
        flow = self._flow = BatchFlow(handler, self.pipeline_depth, self._received, client._client)
        pipe = flow.pipe
        linger = self.config.effective_linger().total_seconds()
        since: float | None = None  # when the consumer first saw the batch it is lingering on
        try:
            while not self._stop_requested.is_set():
                if disconnected.done():
                    return disconnected.result()  # raises the reason of an unexpected disconnection
                flow.acknowledge()
                if queue and not pipe.full:
                    if linger and len(queue) < LINGER_ENOUGH:  # a small batch: wait for more, briefly
                        now = loop.time()  # monotonic: a wall clock set back must not stretch the wait
                        since = now if since is None else since
                        if now < since + linger:
                            await asyncio.sleep(since + linger - now)
                            continue
                    since = None
                    await flow.hand_over(self._take(queue))
                    await asyncio.sleep(0)  # the hand-over may not have waited: let the other tasks run
                    continue
                assert self._stop_future is not None
                waits: set[asyncio.Future[Any]] = {disconnected, self._stop_future}
                if pipe.head is not None:
                    waits.add(pipe.head)
                self._wake = wake = loop.create_future()
                try:
                    await asyncio.wait(waits if queue else {*waits, wake}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._wake = None
                    wake.cancel()
            # Stopping: hand over (and acknowledge) what is queued now, for up to stop_timeout.
            deadline = loop.time() + self.config.stop_timeout.total_seconds()
            batches = len(queue)  # bounded by the queue now (batches may take later arrivals) and the deadline
            while (queue and batches) or pipe:
                if disconnected.done() or loop.time() > deadline:
                    return None
                flow.acknowledge()
                if queue and batches and not pipe.full:
                    batches -= 1
                    await flow.hand_over(self._take(queue))
                elif pipe:
                    flow.busy = True
                    try:
                        await pipe.wait_head()
                    finally:
                        flow.busy = False
        except HandlerFailed:
            if self._stop_requested.is_set():
                return None
            raise
        finally:
            pipe.abandon()
        return None

    def _take(self, queue: deque[Incoming]) -> list[Incoming]:
        batch = take(queue)
        if self._gate is not None:
            self._gate.taken(sum(len(item.payload) for item in batch))
        return batch

    async def _hand_over_qos0_leftovers(self, queue: deque[Incoming], handler: StagedBatchHandler) -> None:
        leftovers = deque(item for item in queue if item.qos == 0)
        queue.clear()
        flow = self._flow = BatchFlow(handler, 1, self._received, None)
        while leftovers:
            with contextlib.suppress(HandlerFailed):
                await flow.hand_over(take(leftovers))
                await flow.settle()
            flow.pipe.abandon()

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
