"""One subscription of the in-memory bus: held messages, leases, counters and flow control.

Private to `gateway.bus.memory`, which owns topics, publishers' waits and dead letters.
Methods are synchronous and cost O(1) per message (amortised). Monotonic times
(`time.monotonic()` seconds) are passed in by the caller so one clock reading serves a call.

A held message is either unleased (in the `DeliveryQueue`) or in `leased` (ack id -> message;
ack ids are per delivery). `held` indexes every message by publish sequence, for the backlog
and the oldest-unacked age.

Lease deadlines, without a timer per lease: every deadline is "now + ack_deadline" at lease
or extend time, so deadlines only grow and a FIFO of (deadline, ack ids), the
`DeadlineQueue`, replaces a heap. `poll` expires what is due. An entry goes stale when its
leases are acked, nacked or extended; stale ids are skipped when they come due and are
compacted away once they outnumber live leases, so the FIFO holds at most about twice the
live leases plus a constant slack.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import operator
from collections import deque
from collections.abc import Sequence
from typing import Any

from gateway.bus._queue import DeliveryQueue, Exhausted, Held
from gateway.core.backoff import backoff_delay
from gateway.core.bus import OutgoingMessage, ReceivedMessage, SubscriptionConfig, SubscriptionStats

_COMPACT_SLACK = 4096
_DATA = operator.attrgetter("data")
_SIZE = operator.attrgetter("size")
_KEY = operator.attrgetter("ordering_key")


class DeadlineQueue:
    """Deadlines of leases in the order they were set."""

    def __init__(self) -> None:
        self._entries: deque[tuple[float, list[int]]] = deque()
        self._ids = 0

    def __len__(self) -> int:
        """Ack ids tracked, stale ones included."""
        return self._ids

    def track(self, deadline: float, ack_ids: list[int], leased: dict[int, Held]) -> None:
        """Record that `ack_ids` (all in `leased`) now expire at `deadline` (not before any earlier one)."""
        self._entries.append((deadline, ack_ids))
        self._ids += len(ack_ids)
        if self._ids > 2 * len(leased) + _COMPACT_SLACK:
            kept: deque[tuple[float, list[int]]] = deque()
            total = 0
            for when, ids in self._entries:
                live = [i for i in ids if (m := leased.get(i)) is not None and m.deadline == when]
                if live:
                    kept.append((when, live))
                    total += len(live)
            self._entries = kept
            self._ids = total

    def next_due(self) -> float:
        """The earliest tracked deadline (maybe stale), or inf."""
        return self._entries[0][0] if self._entries else math.inf

    def pop_due(self, now: float) -> list[int]:
        """Forget and return the ack ids of every entry due by `now`; the caller skips stale ones."""
        entries = self._entries
        out: list[int] = []
        while entries and entries[0][0] <= now:
            out.extend(entries.popleft()[1])
        self._ids -= len(out)
        return out


class Subscription:
    """State and bookkeeping of one subscription; the bus turns `Exhausted` into dead letters."""

    def __init__(self, config: SubscriptionConfig) -> None:
        self.config = config
        self.name = config.name
        self.ordering = config.ordering
        self.max_messages = config.max_outstanding_messages
        self.max_bytes = config.max_outstanding_bytes
        self.batch_messages = config.batch.max_messages
        self.batch_bytes = config.batch.max_bytes
        self.batch_latency = max(0.0, config.batch.max_latency.total_seconds())
        self._ack_deadline = config.ack_deadline.total_seconds()
        self._max_attempts = config.max_delivery_attempts
        self.avail = asyncio.Event()  # set whenever something may have become deliverable
        self.space = asyncio.Event()  # set when the subscription stopped being full
        self.space.set()
        self.queue = DeliveryQueue(self.avail)
        self.leased: dict[int, Held] = {}
        self.deadlines = DeadlineQueue()
        self.held: dict[int, Held] = {}
        self._seq = 0
        self._ack_ids = itertools.count(1)
        self.count = 0
        self.bytes = 0
        self.delivered = self.acked = self.nacked = self.expired = self.dead_lettered = 0
        self.dead_letters_dropped = 0
        self.accepted_over_limit = 0

    @property
    def full(self) -> bool:
        return self.count >= self.max_messages or self.bytes >= self.max_bytes

    def add(self, messages: Sequence[OutgoingMessage], start: int, stop: int, nbytes: int, publish_ns: int) -> None:
        """Hold `messages[start:stop]` (whose sizes sum to `nbytes`), ignoring the limits."""
        part = messages[start:stop]
        self.add_columns(list(map(_DATA, part)), list(map(_SIZE, part)), list(map(_KEY, part)), nbytes, publish_ns)

    def add_columns(
        self, data: list[Any], sizes: list[int], keys: list[str | None], nbytes: int, publish_ns: int
    ) -> None:
        """`add` for messages given column-wise (`sizes` summing to `nbytes`), ignoring the limits."""
        held = self.held
        ready = self.queue.ready
        add_keyed = self.queue.add_keyed
        seq = self._seq
        ordering = self.ordering
        for d, size, key in zip(data, sizes, keys, strict=True):
            m = Held(seq, d, size, key, publish_ns)
            held[seq] = m
            seq += 1
            if ordering and key is not None:
                add_keyed(m, key)
            else:
                ready.append(m)
        self.count += seq - self._seq
        self._seq = seq
        self.bytes += nbytes
        self.avail.set()

    def add_forced(self, messages: Sequence[OutgoingMessage], publish_ns: int) -> int:
        """Hold `messages` even beyond the limits; return how many went over them."""
        over = 0
        for k, o in enumerate(messages):
            over += self.full
            self.add(messages, k, k + 1, o.size, publish_ns)
        self.accepted_over_limit += over
        return over

    def take(self, batch: list[Held], nbytes: int, now: float) -> tuple[int, bool]:
        """Lease deliverable messages into `batch` within the batch policy.

        Returns the batch's new byte count and whether the batch is full. The leases have
        no deadline until `finalize`; `release` undoes them.
        """
        first = len(batch)
        nbytes, full = self.queue.take(batch, nbytes, now, self.batch_messages, self.batch_bytes)
        leased = self.leased
        ack_ids = self._ack_ids
        for k in range(first, len(batch)):
            m = batch[k]
            ack_id = m.ack_id = next(ack_ids)
            m.attempt += 1
            m.deadline = math.inf
            leased[ack_id] = m
        return nbytes, full

    def finalize(self, batch: list[Held], now: float) -> list[ReceivedMessage]:
        """Start the ack deadline of a filled batch and hand it out."""
        deadline = now + self._ack_deadline
        ids: list[int] = []
        out: list[ReceivedMessage] = []
        for m in batch:
            m.deadline = deadline
            ids.append(m.ack_id)
            out.append(ReceivedMessage(m.ack_id, m.data, m.size, m.key, m.attempt, m.publish_ns))
        self.delivered += len(batch)
        self.deadlines.track(deadline, ids, self.leased)
        return out

    def release(self, batch: list[Held], now: float) -> None:
        """Give back a batch that was never handed out (its pull was cancelled or failed)."""
        for m in reversed(batch):
            if self.leased.pop(m.ack_id, None) is not None:
                m.attempt -= 1
                self.queue.put_back(m, now)

    def ack(self, ack_ids: Sequence[int], now: float) -> None:
        leased = self.leased
        held = self.held
        done = 0
        nbytes = 0
        for i in ack_ids:
            m = leased.pop(i, None)
            if m is not None:
                del held[m.seq]
                nbytes += m.size
                done += 1
                if m.kq is not None:
                    self.queue.settled(m.kq, now)
        if done:
            self.count -= done
            self.bytes -= nbytes
            self.acked += done
            self._space_check()

    def nack(self, ack_ids: Sequence[int], delay: float | None, now: float) -> Exhausted:
        out: Exhausted = []
        leased = self.leased
        for i in ack_ids:
            m = leased.pop(i, None)
            if m is not None:
                self.nacked += 1
                self._failed(m, delay, now, "nack", out)
        if out:
            self._space_check()
        return out

    def extend(self, ack_ids: Sequence[int], now: float) -> None:
        deadline = now + self._ack_deadline
        live: list[int] = []
        for i in ack_ids:
            m = self.leased.get(i)
            if m is not None and m.deadline != math.inf:
                m.deadline = deadline
                live.append(i)
        if live:
            self.deadlines.track(deadline, live, self.leased)

    def poll(self, now: float) -> Exhausted:
        """Expire leases past their deadline, then make due retries deliverable."""
        out: Exhausted = []
        if self.deadlines.next_due() <= now:
            leased = self.leased
            for i in self.deadlines.pop_due(now):
                m = leased.get(i)
                if m is not None and m.deadline <= now:  # else acked, nacked or extended since
                    del leased[i]
                    self.expired += 1
                    self._failed(m, None, now, "ack deadline expired", out)
            if out:
                self._space_check()
        self.queue.poll(now)
        return out

    def next_wakeup(self) -> float | None:
        """When `poll` next has something to do (a backoff or a deadline ends), if ever."""
        t = min(self.queue.next_due(), self.deadlines.next_due())
        return None if t == math.inf else t

    def _failed(self, m: Held, delay: float | None, now: float, cause: str, out: Exhausted) -> None:
        """A leased message was nacked or expired: schedule its retry, or give it up."""
        if m.attempt >= self._max_attempts:
            del self.held[m.seq]
            self.count -= 1
            self.bytes -= m.size
            if m.kq is not None:
                self.queue.settled(m.kq, now)
            self.dead_lettered += 1
            out.append((m, cause))
            return
        if delay is None:
            delay = backoff_delay(m.attempt, self.config.min_backoff, self.config.max_backoff)
        m.due = now + delay
        m.deadline = math.inf
        self.queue.retry(m, now)

    def _space_check(self) -> None:
        if not self.space.is_set() and not self.full:
            self.space.set()

    def stats(self, now_ns: int) -> SubscriptionStats:
        oldest = 0.0
        if self.held:
            first = next(iter(self.held.values()))
            oldest = max(0.0, (now_ns - first.publish_ns) / 1e9)
        return SubscriptionStats(
            backlog=self.count,
            backlog_bytes=self.bytes,
            outstanding_leases=len(self.leased),
            oldest_unacked_age_s=oldest,
            delivered=self.delivered,
            acked=self.acked,
            nacked=self.nacked,
            expired=self.expired,
            dead_lettered=self.dead_lettered,
        )
