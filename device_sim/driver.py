"""The sending loop shared by both modes: pre-serialise, wait until due, hand to a transport.

`drive` walks the fleet indices of its `Prefetch` in order. Messages are generated ahead
of time into a bounded buffer (at most `PREFETCH_MESSAGES` messages, `PREFETCH_BYTES` bytes,
and `LEAD_S` seconds of schedule ahead), a chunk at a time (yielding to the event loop
between chunks), while the loop would otherwise sleep; before the start it fills the
buffer until the start time. `Prefetch.preload` (`--preload`) fills it further before the
start, up to `PRELOAD_MESSAGES` / `PRELOAD_BYTES`, so that a flat-out run spends its CPU
on sending, not on generating; the buffer then drains below the normal bounds first.

Each message is handed over once `loop.time()` reaches `t0 + schedule.time_of(index)`; a
loop that fell behind sends at once until it has caught up (no drift, no skipping). Every
hand-over counts in `Stats.sent`, `readings` and, for a bad message, `bad_by_kind`; the
transport then counts it as acknowledged or failed.

Stops at the first of: the indices run out (count reached), the next message is due at or
after `end_s` or `end_s` seconds have passed (duration reached; a sender that cannot keep
up stops on time with fewer messages), or `stop` is set (checked before every message and
during sleeps). Returns the length of the sending phase in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from device_sim.fleet import Fleet, SimMessage
from device_sim.stats import Stats

PREFETCH_MESSAGES = 50_000
PREFETCH_BYTES = 64 * 1024 * 1024
LEAD_S = 2.0
PRELOAD_MESSAGES = 1_000_000
PRELOAD_BYTES = 256 * 1024 * 1024
CHUNK = 256
_YIELD_EVERY = 64
_LONG_SLEEP_S = 0.05


class Transport(Protocol):
    """What the loop needs from the connections of one mode."""

    def has_room(self, message: SimMessage) -> bool:
        """True when `send(message)` would not exceed the connection's in-flight window."""
        ...

    async def wait_room(self, message: SimMessage) -> None:
        """Return once `send(message)` may be called."""
        ...

    def send(self, message: SimMessage) -> None:
        """Publish without waiting; the transport counts the outcome (acknowledged or failed)."""
        ...


def churn_group(epoch: int, size: int, fraction: float) -> list[int]:
    """The connections (0 .. size-1) to reconnect in churn round `epoch` (from 1).

    Rounds take consecutive slices of ceil(fraction * size) connections, wrapping around,
    so every connection is reconnected equally often."""
    take = min(size, max(1, math.ceil(fraction * size - 1e-9)))
    start = ((epoch - 1) * take) % size
    return [(start + i) % size for i in range(take)]


class Prefetch:
    """A bounded buffer of generated messages, filled in chunks."""

    def __init__(self, fleet: Fleet, indices: Iterator[int]) -> None:
        self._fleet = fleet
        self._time_of = fleet.schedule.time_of
        self._indices = indices
        self.buffer: deque[SimMessage] = deque()
        self.exhausted = False
        self._bytes = 0

    def wants_more(self, elapsed_s: float) -> bool:
        """True when the buffer is below its limits and covers less than `LEAD_S` ahead of `elapsed_s`."""
        if self.exhausted or len(self.buffer) >= PREFETCH_MESSAGES or self._bytes >= PREFETCH_BYTES:
            return False
        return not self.buffer or self._time_of(self.buffer[-1].index) < elapsed_s + LEAD_S

    async def preload(self, stop: asyncio.Event) -> None:
        """Fill up to `PRELOAD_MESSAGES` / `PRELOAD_BYTES` (or the end of the run), yielding
        to the event loop between chunks; stops early when `stop` is set."""
        while not self.exhausted and len(self.buffer) < PRELOAD_MESSAGES and self._bytes < PRELOAD_BYTES:
            if stop.is_set():
                return
            self.fill()
            await asyncio.sleep(0)

    def fill(self) -> None:
        message = self._fleet.message
        buffer = self.buffer
        for _ in range(CHUNK):
            index = next(self._indices, None)
            if index is None:
                self.exhausted = True
                return
            item = message(index)
            buffer.append(item)
            self._bytes += len(item.payload)

    def pop(self) -> SimMessage:
        item = self.buffer.popleft()
        self._bytes -= len(item.payload)
        return item


async def drive(
    fleet: Fleet,
    prefetch: Prefetch,
    transport: Transport,
    stats: Stats,
    stop: asyncio.Event,
    t0: float,
    end_s: float | None,
) -> float:
    """Send the messages of `prefetch` on schedule (message 0 due at loop time `t0`)."""
    loop = asyncio.get_running_loop()
    time_of = fleet.schedule.time_of
    while loop.time() < t0 and prefetch.wants_more(0.0) and not stop.is_set():
        prefetch.fill()
        await asyncio.sleep(0)
    await _sleep(t0 - loop.time(), stop)
    since_yield = 0
    while not stop.is_set():
        if not prefetch.buffer:
            if prefetch.exhausted:
                break
            prefetch.fill()
            continue
        message = prefetch.buffer[0]
        offset = time_of(message.index)
        elapsed = loop.time() - t0
        if end_s is not None and (offset >= end_s or elapsed >= end_s):
            break
        delay = offset - elapsed
        if delay > 0:
            if prefetch.wants_more(offset - delay):
                prefetch.fill()
                await asyncio.sleep(0)
            else:
                await _sleep(delay, stop)
                since_yield = 0
            continue
        prefetch.pop()
        if not transport.has_room(message):
            await transport.wait_room(message)
            since_yield = 0
            if stop.is_set():
                break
        stats.sent += 1
        stats.readings += message.readings
        if message.fault is not None:
            stats.count_bad(message.fault)
        transport.send(message)
        since_yield += 1
        if since_yield >= _YIELD_EVERY:
            since_yield = 0
            await asyncio.sleep(0)
    return max(loop.time() - t0, 1e-9)


async def _sleep(delay: float, stop: asyncio.Event) -> None:
    """Sleep `delay` seconds, waking early when `stop` is set (checked directly for long sleeps)."""
    if delay <= 0:
        return
    if delay < _LONG_SLEEP_S:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
