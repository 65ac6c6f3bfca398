"""One subscription of the SQLite bus: the in-memory subscription plus what durability needs.

Private to `gateway.bus.sqlite`. It reuses the memory bus's `Subscription` (leases,
deadlines, backoff, ordering, flow control: `gateway.bus._subscription`) unchanged and adds:

* Messages are held under the bus's global sequence numbers (the primary key of the stored
  message) instead of a private counter, so that an ack names a stored row.
* `floor(next_seq)`: every message of the topic below it is settled (acked, dead-lettered
  or dropped) for this subscription. It is the smallest held sequence number, or
  `next_seq` when nothing is held; it never decreases.
* `restore_from`: re-holds the messages found in the database at startup, with their
  attempt counts.
* `settle_acks`: `ack` that also says which sequence numbers it settled.
* `drop`: settles a held message because the disk bound was reached (`full_policy:
  drop_oldest`), whether it is waiting or leased. A waiting one stays in the delivery queue
  marked `DROPPED` and is discarded when a pull reaches it (`discard_dropped`).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from gateway.bus._queue import DeliveryQueue, Exhausted, Held
from gateway.bus._subscription import DeadlineQueue, Subscription
from gateway.core.bus import OutgoingMessage, SubscriptionConfig


class _Dropped:
    def __repr__(self) -> str:
        return "DROPPED"


DROPPED: Any = _Dropped()  # the data of a message dropped by full_policy: drop_oldest


class DurableSubscription(Subscription):
    """A `Subscription` keyed by stored sequence numbers; see the module docstring."""

    def __init__(self, config: SubscriptionConfig, sub_id: int, topic_id: int, floor: int, hw: int) -> None:
        super().__init__(config)
        self.sub_id = sub_id
        self.topic_id = topic_id
        self.hw = hw  # highest sequence number whose first delivery is recorded in the database
        self.dropped = 0  # messages removed by full_policy: drop_oldest
        self._floor = floor
        self._order: deque[int] = deque()  # held sequence numbers, ascending (stale ones popped lazily)
        self.dropped_waiting = 0  # dropped messages still in the delivery queue
        self.exhausted_at_restore: Exhausted = []  # for the bus to dead-letter before anything is leased

    def add_at(
        self,
        first_seq: int,
        messages: Sequence[OutgoingMessage],
        start: int,
        stop: int,
        nbytes: int,
        publish_ns: int,
        forced: bool = False,
    ) -> int:
        """Hold `messages[start:stop]` as sequence numbers `first_seq...`; ignore limits when forced.

        Returns how many were taken beyond the flow-control limits (forced only). Sequence
        numbers must be above every one held so far.
        """
        self._seq = first_seq
        self._order.extend(range(first_seq, first_seq + stop - start))
        if forced:
            return self.add_forced(messages[start:stop], publish_ns)
        self.add(messages, start, stop, nbytes, publish_ns)
        return 0

    def restore_from(
        self,
        rows: Sequence[tuple[int, int, str | None, int, int, Any]],
        settled: set[int],
        retries: dict[int, int],
        on_held: Callable[[int, int], None],
    ) -> None:
        """Hold the stored messages `rows` (ascending (seq, publish ns, key, size, stored bytes,
        data)) that this subscription has not settled: those at or above its floor and not in
        `settled`. `on_held(seq, stored bytes)` is called for each.

        The attempt count is the recorded one (`retries`), else 1 up to the recorded first
        delivery high water, else 0. A message whose recorded attempts reached
        `max_delivery_attempts` (its last lease was cut short by the stop) goes to
        `exhausted_at_restore` instead of being held.
        """
        limit = self.config.max_delivery_attempts
        hw = self.hw
        run: list[OutgoingMessage] = []  # consecutive messages of one chunk, restored in one `add`
        run_first = run_ns = run_bytes = 0
        attempts: list[tuple[int, int]] = []
        for seq, ns, key, size, nbytes, data in rows[bisect.bisect_left(rows, self._floor, key=lambda r: r[0]) :]:
            if settled and seq in settled:
                continue
            on_held(seq, nbytes)
            recorded = retries.get(seq) if retries else None
            if recorded is not None and recorded >= limit:
                m = Held(seq, data, size, key, ns)
                m.attempt = recorded
                self.exhausted_at_restore.append((m, "delivery interrupted by a restart"))
                continue
            if run and (seq != run_first + len(run) or ns != run_ns):
                self._restore_run(run_first, run, run_bytes, run_ns)
                run = []
            if not run:
                run_first, run_ns, run_bytes = seq, ns, 0
            run.append(OutgoingMessage(data, size, key))
            run_bytes += size
            attempt = recorded if recorded is not None else (1 if seq <= hw else 0)
            if attempt:
                attempts.append((seq, attempt))
        if run:
            self._restore_run(run_first, run, run_bytes, run_ns)
        held = self.held
        for seq, attempt in attempts:
            held[seq].attempt = attempt

    def _restore_run(self, first_seq: int, run: list[OutgoingMessage], nbytes: int, publish_ns: int) -> None:
        self._seq = first_seq
        self.add(run, 0, len(run), nbytes, publish_ns)
        self._order.extend(range(first_seq, first_seq + len(run)))

    def clear(self, floor: int) -> None:
        """Forget every held message, leased or waiting, and the attempts recorded (a seek; the
        caller holds the new ones with `restore_from`). Ack ids keep counting: old ones stay void."""
        self.queue = DeliveryQueue(self.avail)
        self.leased = {}
        self.deadlines = DeadlineQueue()
        self.held = {}
        self.count = self.bytes = 0
        self._order = deque()
        self.dropped_waiting = 0
        self.exhausted_at_restore = []
        self.hw = 0
        self._floor = floor
        self.space.set()  # publishers waiting on it check again

    def floor(self, next_seq: int) -> int:
        order = self._order
        held = self.held
        while order and order[0] not in held:
            order.popleft()
        floor = order[0] if order else next_seq
        if floor > self._floor:
            self._floor = floor
        return self._floor

    def settle_acks(self, ack_ids: Sequence[int], now: float) -> list[int]:
        """`Subscription.ack`, returning the sequence numbers it settled."""
        leased = self.leased
        held = self.held
        seqs: list[int] = []
        nbytes = 0
        for i in ack_ids:
            m = leased.pop(i, None)
            if m is not None:
                del held[m.seq]
                nbytes += m.size
                seqs.append(m.seq)
                if m.kq is not None:
                    self.queue.settled(m.kq, now)
        if seqs:
            self.count -= len(seqs)
            self.bytes -= nbytes
            self.acked += len(seqs)
            self._space_check()
        return seqs

    def drop(self, seq: int, now: float) -> bool:
        """Settle a held message without delivering it again (its ack id dies); False if not held."""
        m = self.held.pop(seq, None)
        if m is None:
            return False
        self.count -= 1
        self.bytes -= m.size
        m.data = DROPPED
        if self.leased.get(m.ack_id) is m:  # leased, or taken by a pull still filling its batch
            del self.leased[m.ack_id]
            if m.kq is not None:
                self.queue.settled(m.kq, now)
        else:
            self.dropped_waiting += 1
        self.dropped += 1
        self._space_check()
        return True

    def discard_dropped(self, batch: list[Held], start: int, now: float) -> int:
        """Remove dropped messages from `batch[start:]` (undoing their lease); return their bytes.

        Needed only while `dropped_waiting` is not zero or after a `drop` since the batch began.
        """
        kept: list[Held] = []
        removed = 0
        for k in range(start, len(batch)):
            m = batch[k]
            if m.data is not DROPPED:
                kept.append(m)
                continue
            removed += m.size
            if self.leased.get(m.ack_id) is m:  # dropped while waiting, then taken by this pull
                del self.leased[m.ack_id]
                self.dropped_waiting -= 1
                if m.kq is not None:
                    self.queue.settled(m.kq, now)
        batch[start:] = kept
        return removed
