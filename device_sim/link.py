"""One load-mode MQTT connection: a publish-only MQTT 3.1.1 client on an asyncio transport.

Why not aiomqtt here: an aiomqtt `publish` costs an Event, a `wait_for` task and some 450
Python calls through paho; on this machine that is 6-8k messages/s from one client and about
2k/s spread over 1,000 clients. This writes packets straight to the transport and tracks
PUBACKs in a dict: 25-35k messages/s per process including payload generation, which the load
mode needs to outrun the gateway. The per-device mode keeps using aiomqtt.

Packets published in one pass of the event loop are written together (one syscall instead
of one per message). Guarantees: at most `window` QoS 1 publishes are unacknowledged at once (`has_room`,
`wait_room`); every publish handed to `publish` is reported exactly once to the `Stats`
as acknowledged or failed (on PUBACK; for QoS 0 when written; as failed when the
connection is lost first or `close` gives up waiting). A lost connection is not
re-established here: the owner reopens a new link. Not promised: delivery of QoS 0
messages written just before the connection broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass

from device_sim.stats import Stats
from device_sim.wire import (
    CONNACK,
    CONNACK_REASONS,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PUBACK,
    PacketReader,
    connect_packet,
    packet_id,
    publish_head,
)

log = logging.getLogger(__name__)


class LinkError(Exception):
    """The connection could not be made or was refused."""


@dataclass(slots=True, frozen=True)
class LinkOptions:
    host: str
    port: int
    qos: int
    window: int
    keepalive_s: int
    connect_timeout_s: float
    ssl_context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None


class MqttLink(asyncio.Protocol):
    """A connected publisher; create with `MqttLink.open`."""

    def __init__(self, options: LinkOptions, stats: Stats) -> None:
        self._options = options
        self._stats = stats
        self._qos = options.qos
        self._window = options.window
        self._reader = PacketReader()
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._lost = asyncio.Event()  # connection_lost was called: everything written has left
        self._inflight: dict[int, float] = {}
        self._next_pid = 0
        self._room = asyncio.Event()
        self._room.set()
        self._writable = asyncio.Event()
        self._writable.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pinger: asyncio.Task[None] | None = None
        self._corked: list[bytes] = []
        self.closed = False

    @classmethod
    async def open(cls, options: LinkOptions, stats: Stats, client_id: str) -> MqttLink:
        """Connect, send CONNECT and wait for a positive CONNACK; LinkError otherwise."""
        loop = asyncio.get_running_loop()
        link: MqttLink | None = None
        try:
            async with asyncio.timeout(options.connect_timeout_s):
                _, link = await loop.create_connection(
                    lambda: cls(options, stats),
                    options.host,
                    options.port,
                    ssl=options.ssl_context,
                    server_hostname=options.host if options.ssl_context else None,
                )
                assert link._transport is not None
                link._transport.write(
                    connect_packet(client_id, options.keepalive_s, options.username, options.password)
                )
                code = await link._connack
        except (OSError, TimeoutError, ConnectionError) as exc:
            if link is not None:
                link.abort()
            raise LinkError(f"cannot connect to {options.host}:{options.port}: {exc or type(exc).__name__}") from None
        if code != 0:
            link.abort()
            raise LinkError(f"broker refused the connection: {CONNACK_REASONS.get(code, f'code {code}')}")
        link._pinger = asyncio.create_task(link._ping(max(1.0, options.keepalive_s / 2)))
        return link

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def has_room(self) -> bool:
        return not self.closed and len(self._inflight) < self._window and self._writable.is_set()

    async def wait_room(self) -> None:
        """Return once a publish would not exceed the window nor the socket buffer (or closed)."""
        while not self.has_room() and not self.closed:
            if len(self._inflight) >= self._window:
                self._room.clear()
                await self._room.wait()
            else:
                await self._writable.wait()

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Write one PUBLISH (`topic` length-prefixed); counts it as acknowledged or failed
        (the caller counts it as sent)."""
        stats = self._stats
        transport = self._transport
        if self.closed or transport is None:
            stats.failed += 1
            return
        head = publish_head(topic, len(payload), self._qos)
        corked = self._corked
        if not corked:
            asyncio.get_running_loop().call_soon(self._flush)
        if not self._qos:
            corked.append(head)
            corked.append(payload)
            stats.acknowledged += 1
            return
        pid = self._next_pid
        while True:
            pid = pid % 0xFFFF + 1
            if pid not in self._inflight:
                break
        self._next_pid = pid
        self._inflight[pid] = time.perf_counter()
        self._idle.clear()
        corked.append(head)
        corked.append(packet_id(pid))
        corked.append(payload)

    def _flush(self) -> None:
        """Write the packets published since the last flush in one go (one syscall, not one each)."""
        if self._corked and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._corked))
        self._corked.clear()

    async def close(self, drain_timeout_s: float) -> None:
        """Wait up to `drain_timeout_s` for outstanding PUBACKs, then DISCONNECT and close, and
        wait up to `drain_timeout_s` again for the transport to hand its buffer to the kernel.

        Publishes still unacknowledged then count as failed. Without that last wait a QoS 0
        run against a broker that reads slowly lost what asyncio still buffered when the
        process ended, though it had counted it as sent."""
        if not self.closed and self._inflight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout_s):
                    await self._idle.wait()
        self._flush()
        transport = self._transport
        if transport is None or self.closed:
            self._shutdown()
            return
        transport.write(DISCONNECT_PACKET)
        transport.close()
        self._shutdown()
        try:
            async with asyncio.timeout(max(drain_timeout_s, 0.001)):
                await self._lost.wait()
        except TimeoutError:
            if unsent := transport.get_write_buffer_size():
                log.warning("%d bytes still unsent after %.1f s: connection aborted", unsent, drain_timeout_s)
            transport.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._shutdown()

    def _shutdown(self) -> None:
        self.closed = True
        if self._pinger is not None:
            self._pinger.cancel()
        if self._inflight:
            self._stats.failed += len(self._inflight)
            self._inflight.clear()
        self._idle.set()
        self._room.set()
        self._writable.set()

    async def _ping(self, every_s: float) -> None:
        while not self.closed and self._transport is not None:
            await asyncio.sleep(every_s)
            if not self.closed:
                self._transport.write(PINGREQ_PACKET)

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        inflight = self._inflight
        stats = self._stats
        now = time.perf_counter()
        try:
            for first, body in self._reader.feed(data):
                kind = first & 0xF0
                if kind == PUBACK and len(body) >= 2:
                    sent_at = inflight.pop((body[0] << 8) | body[1], None)
                    if sent_at is not None:
                        stats.acknowledged += 1
                        stats.latency.record(now - sent_at)
                elif kind == CONNACK and len(body) >= 2 and not self._connack.done():
                    self._connack.set_result(body[1])
        except ValueError:
            self.abort()
            return
        if len(inflight) < self._window:
            self._room.set()
        if not inflight:
            self._idle.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost.set()
        if not self._connack.done():
            self._connack.set_exception(ConnectionError(str(exc) if exc else "connection closed by the broker"))
        self._transport = None
        self._shutdown()
