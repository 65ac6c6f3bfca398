"""Backpressure on the client ingress's socket: the local queue of one connection, bounded in bytes.

The reader (`gateway.ingress.mqtt_client.PublishReader`) parses what the socket holds and
queues the publishes for the consumer, which validates them and hands them to the bus in
batches. QoS 1 is bounded by the inflight window (MQTT 5 Receive Maximum), QoS 0 by nothing
but this gate:

* `added(n)`: the reader queued `n` payload bytes. Above `high` queued bytes the gate takes the
  socket out of the event loop's readers: the kernel buffer fills, TCP closes its window and
  the broker keeps what follows (QoS 0: under its own limits, e.g. Mosquitto's
  `max_queued_messages` / `max_queued_bytes`, beyond which it drops and counts).
* `taken(n)`: the consumer took `n` bytes. At or below `low` queued bytes the gate puts the
  socket back and reads at once (TLS may hold decrypted bytes that no readiness event
  announces), if it is still this connection's socket.

* `read(n)`: the reader got `n` bytes in one socket read. With `linger` set, a read of
  fewer than `small` bytes takes the socket out of the readers for `linger` seconds: at a
  moderate rate every readiness event would otherwise read a message or two, and each read
  is a system call, a wake-up of the consumer and a retake of the interpreter lock. After
  the linger one read takes what arrived meanwhile. A burst reads full buffers and never
  lingers. Cost: up to `linger` more latency per message.

While paused nothing is read, PINGRESP included: a pause longer than about 1.5 keep-alive
intervals (the consumer stuck that long, e.g. the bus blocked on a full disk budget) ends the
connection on a keep-alive timeout; the ingress reconnects and the broker redelivers QoS 1.

Private APIs (aiomqtt 2.5 over paho-mqtt 2, as in `gateway.ingress.mqtt_client`): the paho
client's `_sock` and `loop_read`; the readable-callback re-added here does what aiomqtt's own
does (read until TLS has nothing pending; an error fails the connection through `fail`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

HIGH_BYTES = 8 * 1024 * 1024  # queued payload bytes of one connection before reads pause ...
LOW_BYTES = 2 * 1024 * 1024  # ... and below which they resume
SMALL_READ = 16 * 1024  # a socket read below this many bytes lingers (with `linger` set)


class ReadGate:
    """One connection's queued bytes and the pause of its socket reads (see the module docstring)."""

    def __init__(
        self,
        inner: Any,
        fail: Callable[[BaseException], None],
        on_pause: Callable[[], None],
        high: int = HIGH_BYTES,
        low: int = LOW_BYTES,
        linger: float = 0.0,
        small: int = SMALL_READ,
    ) -> None:
        if not 0 <= low < high:
            raise ValueError("need 0 <= low < high")
        if linger < 0:
            raise ValueError("need linger >= 0")
        self.queued = 0
        self.paused = False
        self._inner = inner  # the paho client beneath aiomqtt
        self._fail = fail
        self._on_pause = on_pause
        self._high = high
        self._low = low
        self._sock: Any = None  # the socket paused, to resume only that one
        self._linger = linger
        self._small = small
        self._lingering: asyncio.TimerHandle | None = None  # reads are off until it fires

    def added(self, nbytes: int) -> None:
        self.queued += nbytes
        if self.queued > self._high and not self.paused:
            self._pause()

    def taken(self, nbytes: int) -> None:
        self.queued -= nbytes
        if self.paused and self.queued <= self._low:
            self._resume()

    def read(self, nbytes: int) -> None:
        if self._linger and nbytes < self._small and self._lingering is None and not self.paused:
            sock = self._inner._sock
            if sock is None or sock.fileno() < 0:
                return
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            self._lingering = loop.call_later(self._linger, self._end_linger, sock)

    def _end_linger(self, sock: Any) -> None:
        self._lingering = None
        if self.paused or self._inner._sock is not sock or sock.fileno() < 0:
            return  # paused by the byte bound meanwhile (it resumes), or the connection ended
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self._readable()

    def _pause(self) -> None:
        sock = self._inner._sock
        if sock is None or sock.fileno() < 0:
            return  # closing: nothing more will be read anyway
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._sock = sock
        self.paused = True
        self._on_pause()

    def _resume(self) -> None:
        sock, self._sock = self._sock, None
        self.paused = False
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if sock is None or self._inner._sock is not sock or sock.fileno() < 0:
            return  # the connection ended meanwhile
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._readable)
        loop.call_soon(self._readable)

    def _readable(self) -> None:
        inner = self._inner
        try:
            while inner._sock is not None and not self.paused and self._lingering is None:
                inner.loop_read()
                pending = getattr(inner._sock, "pending", None)
                if pending is None or pending() <= 0:
                    break
        except Exception as exc:  # a broken connection: aiomqtt's callback does the same
            self._fail(exc)
