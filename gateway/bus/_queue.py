"""Which held messages of one in-memory subscription are deliverable, and in what order.

Also the per-message and per-key records (`Held`, `KeyQueue`), created on the hot path.

Private to `gateway.bus`. An unleased message is in exactly one place:

* `ready`: deliverable now, redeliveries first, then publish order. With ordering, an entry
  may be a `KeyQueue`, standing for the head of that key's messages;
* `delayed`: a heap of (due, tie, item) for messages (or keys) waiting out a backoff;
* a `KeyQueue.pending` deque (ordering only), in publish order, retries included.

With ordering, a key is deliverable only while none of its messages is leased; a batch takes
as many of its messages as fit, in publish order. Messages without a key are not ordered.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from typing import Any


class Held:
    """One message as one subscription holds it (each subscription has its own record).

    `ack_id` and `deadline` belong to the current lease; `deadline` is inf while the message
    is not leased, or while the pull that leased it is still filling its batch. `due` is when
    a retry may be delivered. `kq` is the message's ordering key queue (ordering only).
    """

    __slots__ = ("ack_id", "attempt", "data", "deadline", "due", "key", "kq", "publish_ns", "seq", "size")

    def __init__(self, seq: int, data: Any, size: int, key: str | None, publish_ns: int) -> None:
        self.seq = seq
        self.data = data
        self.size = size
        self.key = key
        self.publish_ns = publish_ns
        self.kq: KeyQueue | None = None
        self.attempt = 0
        self.ack_id = 0
        self.deadline = math.inf
        self.due = 0.0


class KeyQueue:
    """The not-yet-leased messages of one ordering key, in publish order, and its lease count.

    Invariant: `queued` (present in the subscription's ready deque or delayed heap) only while
    `leased` is 0 and `pending` is not empty.
    """

    __slots__ = ("key", "leased", "pending", "queued")

    def __init__(self, key: str) -> None:
        self.key = key
        self.pending: deque[Held] = deque()
        self.leased = 0
        self.queued = False


# Messages removed because their attempts ran out, each with the cause of the last failure.
Exhausted = list[tuple[Held, str]]


class DeliveryQueue:
    """Ready and delayed messages; `avail` is set whenever something may have become deliverable."""

    def __init__(self, avail: asyncio.Event) -> None:
        self.avail = avail
        self.ready: deque[Held | KeyQueue] = deque()
        self.delayed: list[tuple[float, int, Held | KeyQueue]] = []
        self.keys: dict[str, KeyQueue] = {}
        self._tie = itertools.count()

    def add_keyed(self, m: Held, key: str) -> None:
        """Queue a new message of an ordering key (unkeyed ones go straight onto `ready`)."""
        kq = self.keys.get(key)
        if kq is None:
            kq = self.keys[key] = KeyQueue(key)
        m.kq = kq
        kq.pending.append(m)
        if not kq.leased and not kq.queued:
            kq.queued = True
            self.ready.append(kq)

    def take(self, batch: list[Held], nbytes: int, now: float, max_n: int, max_b: int) -> tuple[int, bool]:
        """Move deliverable messages into `batch` (at least one if any, then within `max_n`
        messages and `max_b` bytes). Returns the new byte count and whether the batch is full.
        """
        ready = self.ready
        while ready:
            if len(batch) >= max_n or nbytes >= max_b:
                return nbytes, True
            item = ready[0]
            if isinstance(item, Held):
                if batch and nbytes + item.size > max_b:
                    return nbytes, True
                ready.popleft()
                batch.append(item)
                nbytes += item.size
                continue
            ready.popleft()
            item.queued = False
            nbytes, full = self._take_key(item, batch, nbytes, now, max_n, max_b)
            if full:
                return nbytes, True
        return nbytes, len(batch) >= max_n or nbytes >= max_b

    def _take_key(
        self, kq: KeyQueue, batch: list[Held], nbytes: int, now: float, max_n: int, max_b: int
    ) -> tuple[int, bool]:
        pending = kq.pending
        if kq.leased or not pending:
            return nbytes, False
        if pending[0].due > now:
            kq.queued = True
            heapq.heappush(self.delayed, (pending[0].due, next(self._tie), kq))
            return nbytes, False
        took = 0
        full = False
        while pending:
            m = pending[0]
            if m.due > now:
                break
            if len(batch) >= max_n or (batch and nbytes + m.size > max_b):
                full = True
                break
            batch.append(pending.popleft())
            nbytes += m.size
            took += 1
        if took:
            kq.leased = took
        else:
            kq.queued = True
            self.ready.appendleft(kq)
        return nbytes, full

    def retry(self, m: Held, now: float) -> None:
        """Deliver a formerly leased message again once `m.due` has come."""
        if m.kq is None:
            heapq.heappush(self.delayed, (m.due, next(self._tie), m))
        else:
            self._requeue_keyed(m, m.kq, now)
        self.avail.set()

    def put_back(self, m: Held, now: float) -> None:
        """Return a message taken by a pull that never handed it out (call newest first)."""
        if m.kq is None:
            self.ready.appendleft(m)
        else:
            self._requeue_keyed(m, m.kq, now)
        self.avail.set()

    def settled(self, kq: KeyQueue, now: float) -> None:
        """A leased message of `kq` was acked or dead-lettered."""
        kq.leased -= 1
        self._schedule_key(kq, now, front=False)

    def poll(self, now: float) -> None:
        """Make every message whose backoff has ended deliverable, before fresh ones."""
        delayed = self.delayed
        if delayed and delayed[0][0] <= now:
            due: list[Held | KeyQueue] = []
            while delayed and delayed[0][0] <= now:
                due.append(heapq.heappop(delayed)[2])
            self.ready.extendleft(reversed(due))
            self.avail.set()

    def next_due(self) -> float:
        """When the next backoff ends, or inf."""
        return self.delayed[0][0] if self.delayed else math.inf

    def _requeue_keyed(self, m: Held, kq: KeyQueue, now: float) -> None:
        pending = kq.pending
        i = 0
        n = len(pending)
        while i < n and pending[i].seq < m.seq:
            i += 1
        pending.insert(i, m)
        kq.leased -= 1
        self._schedule_key(kq, now, front=True)

    def _schedule_key(self, kq: KeyQueue, now: float, front: bool) -> None:
        """A key without leases becomes deliverable (when its head is due), or is forgotten."""
        if kq.leased or kq.queued:
            return
        if not kq.pending:
            del self.keys[kq.key]
            return
        kq.queued = True
        due = kq.pending[0].due
        if due > now:
            heapq.heappush(self.delayed, (due, next(self._tie), kq))
        elif front:
            self.ready.appendleft(kq)
        else:
            self.ready.append(kq)
        self.avail.set()
