"""Publishing on the SQLite bus: flow control, the disk bound, sequence numbers, hand-over to the writer.

Private to `gateway.bus.sqlite` (whose docstring states the guarantees).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Sequence

from gateway.bus._sqlite_paging import SQLiteBusPaging
from gateway.bus._sqlite_segments import RECORD_OVERHEAD, Chunk
from gateway.bus._sqlite_subscription import DurableSubscription
from gateway.bus.codec import encode_many
from gateway.core.bus import OutgoingMessage, resolved

log = logging.getLogger("gateway.bus.sqlite")
_DATA = operator.attrgetter("data")
_SIZE = operator.attrgetter("size")
_KEY = operator.attrgetter("ordering_key")


class SQLiteBusPublishing(SQLiteBusPaging):
    """`SQLiteBusPaging` plus `publish` and `hand_over`."""

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> int:
        """Store and hold every message for every subscription of `topic`; return once committed.

        Waits only while (`full_policy: block`) the disk bound is reached: a subscription whose
        in-memory window is full holds further messages on disk (`_sqlite_paging`). Raises
        KeyError for an unknown topic, CodecError (a ValueError) for data that cannot be stored
        (then nothing of the call is published) and BusClosed once closed.
        Not atomic under backpressure: the prefix handed over before a wait stays published.
        """
        reached, done = await self._hand_over(topic, messages)
        await done
        return reached

    async def hand_over(self, topic: str, messages: Sequence[OutgoingMessage]) -> asyncio.Future[None]:
        """`publish` without the wait for the commit: returns once the messages are held (their
        sequence numbers taken, in call order) with a future resolved when they are committed
        (or failed with the commit's error). Same errors and waits as `publish`."""
        return (await self._hand_over(topic, messages))[1]

    async def _hand_over(self, topic: str, messages: Sequence[OutgoingMessage]) -> tuple[int, asyncio.Future[None]]:
        self._check_open()
        subs = self._topics.get(topic)
        if subs is None:
            raise KeyError(f"topic {topic!r} does not exist (create_topic first)")
        n = len(messages)
        if not subs or not n:
            return len(subs), resolved()
        blobs = encode_many(list(map(_DATA, messages)))
        self._seal()
        start = 0
        done: asyncio.Future[None] | None = None
        while start < n:
            stop, nbytes, wait_on = self._fit(subs, messages, blobs, start)
            if stop > start:
                done = self._hold(topic, subs, messages, blobs, start, stop, nbytes)
                start = stop
                continue
            assert wait_on is not None
            wait_on.clear()
            await self._wait_blocked(topic, wait_on)
            self._check_open()
        assert done is not None  # n > 0: at least one run was held
        return len(subs), done

    async def _wait_blocked(self, topic: str, space: asyncio.Event) -> None:
        """Wait for `space`, adding the time to `publish_blocked_seconds` at least every second
        (a publisher blocked for an hour shows in the metric during that hour, not after it)."""
        while True:
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(1.0):
                    await space.wait()
                return
            except TimeoutError:
                continue
            finally:
                if self._metrics is not None:
                    self._metrics.publish_blocked_seconds.labels(topic).inc(time.monotonic() - t0)

    def _fit(
        self, subs: tuple[DurableSubscription, ...], messages: Sequence[OutgoingMessage], blobs: list[bytes], start: int
    ) -> tuple[int, int, asyncio.Event | None]:
        """The end of the run from `start` that can be held now and its bytes, or what to wait for.

        Only the disk bound limits it (`full_policy: block`); like flow control in the memory
        bus, it takes messages while it is not reached yet, so it may be exceeded by one message.
        """
        n = len(messages)
        if self._drop_oldest:
            return n, sum(map(_SIZE, messages[start:])), None
        disk_room = self._max_bytes - self._ledger.unacked_bytes
        if disk_room <= 0:
            return start, 0, self._disk_space
        if RECORD_OVERHEAD * (n - start) + sum(map(len, blobs[start:])) < disk_room:  # the usual case: all fit
            return n, sum(map(_SIZE, messages[start:])), None
        nbytes = 0
        dbytes = 0
        k = start
        while k < n and dbytes < disk_room:
            nbytes += messages[k].size
            dbytes += RECORD_OVERHEAD + len(blobs[k])
            k += 1
        return k, nbytes, None

    def _hold(
        self,
        topic: str,
        subs: tuple[DurableSubscription, ...],
        messages: Sequence[OutgoingMessage],
        blobs: list[bytes],
        start: int,
        stop: int,
        nbytes: int,
    ) -> asyncio.Future[None]:
        """Hold `messages[start:stop]` for `subs`; the future resolves once they are committed."""
        part = messages[start:stop]
        data = blobs[start:stop]
        data_sizes = list(map(len, data))
        if self._drop_oldest:
            self._make_room(sum(data_sizes) + RECORD_OVERHEAD * len(data))
        first = self._next_seq
        self._next_seq = first + (stop - start)
        publish_ns = time.time_ns()
        self._ledger.hold(first, data_sizes, len(subs))
        for sub in subs:
            sub.add_at(first, messages, start, stop, nbytes, publish_ns)
        chunk = Chunk(first, self._topic_ids[topic], publish_ns, list(map(_SIZE, part)), list(map(_KEY, part)), data)
        with self._writer.batch() as p:
            p.chunks.append(chunk)
            done = self._writer.waiter(p)
        self._count_published(topic, stop - start)
        return done

    def _make_room(self, need: int) -> None:
        """drop_oldest: settle the oldest unacked messages for every subscription until `need`
        more bytes fit in max_bytes (their segments go with the next trim to max_bytes)."""
        ledger = self._ledger
        if ledger.unacked_bytes + need <= self._max_bytes:
            return
        now = time.monotonic()
        dropped: dict[int, list[int]] = {}
        touched: dict[int, DurableSubscription] = {}
        count = 0
        for seq in ledger.oldest():
            count += 1
            for sub in self._subs.values():
                if sub.drop(seq, now):
                    touched[sub.sub_id] = sub
                    dropped.setdefault(sub.sub_id, []).append(seq)
            if ledger.unacked_bytes + need <= self._max_bytes:
                break
        if not count:
            return
        with self._writer.batch() as p:
            for sid, seqs in dropped.items():
                self._settle(p, touched[sid], seqs)
        for sub in touched.values():
            self._page_in(sub)
        self._dropped += count
        if self._metrics is not None:
            self._metrics.bus_dropped_oldest.inc(count)
        log.warning(
            "bus disk bound reached (max_bytes=%d): dropped the %d oldest unacked message(s); %d dropped since start",
            self._max_bytes,
            count,
            self._dropped,
        )
