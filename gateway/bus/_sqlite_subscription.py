"""One subscription of the SQLite bus: the in-memory subscription plus what durability needs.

Private to `gateway.bus.sqlite`. It reuses the memory bus's `Subscription` (leases,
deadlines, backoff, ordering, flow control: `gateway.bus._subscription`) unchanged and adds:

* Messages are held under the bus's global sequence numbers (the primary key of the stored
  message) instead of a private counter, so that an ack names a stored row.
* `floor(next_seq)`: every message of the topic below it is settled (acked, dead-lettered
  or dropped) for this subscription. It is the smallest held sequence number (in the window
  or on disk), or `next_seq` when nothing is held; it never decreases.
* A window: `max_outstanding_messages` / `_bytes` bound what is held in memory, not what
  is held. Messages beyond the window are held on disk only (`disk`, a `DiskBacklog`) and
  paged in, oldest first, as the window drains; the bus reads them (`page_room`,
  `paged_in`). Everything in the window is older than everything on disk.
* `restore_disk`: lists on disk the messages found in the database at startup; they are
  paged in with their recorded attempt counts.
* `settle_acks`: `ack` that also says which sequence numbers it settled.
* `drop`: settles a held message because the disk bound was reached (`full_policy:
  drop_oldest`), whether it is waiting, leased or on disk. A waiting one stays in the delivery queue
  marked `DROPPED` and is discarded when a pull reaches it (`discard_dropped`).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque
from collections.abc import Callable, Sequence
from operator import eq
from typing import Any

from gateway.bus._queue import DeliveryQueue, Exhausted, Held
from gateway.bus._sqlite_backlog import DiskBacklog, PagedRun
from gateway.bus._sqlite_store import StoredRows
from gateway.bus._subscription import DeadlineQueue, Subscription
from gateway.core.bus import OutgoingMessage, SubscriptionConfig, SubscriptionStats


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
        self.disk = DiskBacklog()  # held on disk only, above everything in the window
        self.generation = 0  # bumped by a seek: a page-in from before it is ignored
        self.restored_retries: dict[int, int] = {}  # recorded attempts of messages not paged in yet
        self.restored_hw = 0  # the recorded first-delivery high water at the restart

    def stats(self, now_ns: int) -> SubscriptionStats:
        """`Subscription.stats` with the on-disk backlog included."""
        st = super().stats(now_ns)
        disk = self.disk
        if not disk:
            return st
        oldest = st.oldest_unacked_age_s
        ns = disk.oldest_ns()
        if not self.held and ns is not None:
            oldest = max(0.0, (now_ns - ns) / 1e9)
        return dataclasses.replace(
            st,
            backlog=st.backlog + disk.count,
            backlog_bytes=st.backlog_bytes + disk.bytes,
            oldest_unacked_age_s=oldest,
        )

    def add_at(
        self,
        first_seq: int,
        messages: Sequence[OutgoingMessage],
        start: int,
        stop: int,
        nbytes: int,
        publish_ns: int,
    ) -> None:
        """Hold `messages[start:stop]` (sizes summing to `nbytes`) as sequence numbers
        `first_seq...`, above every one held so far: in the window while it has room (a limit
        takes messages while it is not reached yet, as in the memory bus's flow control) and
        nothing is on disk; the rest on disk only."""
        k = start
        if not self.disk:
            if self.count + (stop - start) <= self.max_messages and self.bytes + nbytes <= self.max_bytes:
                k = stop
            else:
                n, b = self.count, self.bytes
                while k < stop and n < self.max_messages and b < self.max_bytes:
                    b += messages[k].size
                    n += 1
                    k += 1
                nbytes = b - self.bytes
            if k > start:
                self._seq = first_seq
                self.add(messages, start, k, nbytes, publish_ns)
                self._order.extend(range(first_seq, first_seq + k - start))
        if k < stop:
            first = first_seq + k - start
            self.disk.append(range(first, first + stop - k), [messages[j].size for j in range(k, stop)], publish_ns)

    def restore_disk(self, rows: StoredRows, settled: set[int], on_held: Callable[[int, int], None]) -> None:
        """List on disk the stored messages `rows` this subscription has not settled: those
        at or above its floor and not in `settled`; `on_held(seq, stored bytes)` for each.
        The window fills by paging in (see `paged_in`)."""
        seqs = rows.seqs
        keep = range(bisect.bisect_left(seqs, self._floor), len(seqs))
        if settled:
            keep = [k for k in keep if seqs[k] not in settled]  # type: ignore[assignment]
        for k in keep:
            on_held(seqs[k], rows.stored[k])
        self.disk.append([seqs[k] for k in keep], [rows.sizes[k] for k in keep], [rows.ns[k] for k in keep])

    def paged_in(self, seqs: Sequence[int], runs: list[PagedRun]) -> list[int]:
        """Move the taken messages `seqs` (ascending) that arrived (`runs`, from `read_messages`)
        into the window, with the attempt counts recorded before a restart (`restored_retries`,
        `restored_hw`); those whose recorded attempts reached `max_delivery_attempts` go to
        `exhausted_at_restore`. Returns the sequence numbers that were taken but not found (lost)."""
        disk = self.disk
        if (
            not self.restored_retries
            and self.restored_hw < seqs[0]
            and len(disk.taken) == len(seqs)  # none dropped while they were read, and no other read
            and all(map(eq, disk.taken, seqs))  # under way (drops can empty `taken` and let one start)
            and sum(len(r.data) for r in runs) == len(seqs)  # none lost
        ):
            disk.all_arrived()
            self._add_runs(runs)
            return []
        return self._paged_in_one_by_one(seqs, runs)

    def _paged_in_one_by_one(self, seqs: Sequence[int], runs: list[PagedRun]) -> list[int]:
        found = {
            r.first_seq + k: (r.publish_ns, key, size, data)
            for r in runs
            for k, (key, size, data) in enumerate(zip(r.keys, r.sizes, r.data, strict=True))
        }
        limit = self.config.max_delivery_attempts
        retries = self.restored_retries
        hw = self.restored_hw
        lost: list[int] = []
        kept: list[PagedRun] = []
        run: PagedRun | None = None
        attempts: list[tuple[int, int]] = []
        for seq in seqs:
            if not self.disk.arrived(seq):
                continue  # dropped while it was read
            row = found.get(seq)
            if row is None:
                lost.append(seq)
                continue
            ns, key, size, data = row
            recorded = retries.pop(seq, None) if retries else None
            if recorded is not None and recorded >= limit:
                m = Held(seq, data, size, key, ns)
                m.attempt = recorded
                self.exhausted_at_restore.append((m, "delivery interrupted by a restart"))
                self.dead_lettered += 1
                continue
            if run is None or seq != run.first_seq + len(run.data) or ns != run.publish_ns:
                run = PagedRun(seq, ns, [], [], [])
                kept.append(run)
            run.keys.append(key)
            run.sizes.append(size)
            run.data.append(data)
            attempt = recorded if recorded is not None else (1 if seq <= hw else 0)
            if attempt:
                attempts.append((seq, attempt))
        self._add_runs(kept)
        held = self.held
        for seq, attempt in attempts:
            held[seq].attempt = attempt
        return lost

    def _add_runs(self, runs: list[PagedRun]) -> None:
        """Hold each run (ascending, above everything in the window) in the window."""
        for r in runs:
            self._seq = r.first_seq
            self.add_columns(r.data, r.sizes, r.keys, sum(r.sizes), r.publish_ns)
            self._order.extend(range(r.first_seq, r.first_seq + len(r.data)))

    def page_room(self) -> tuple[int, int] | None:
        """How much to page in now (messages, bytes), or None: only when something is on disk,
        nothing is being read, and the window is at most half full (pages are not tiny)."""
        disk = self.disk
        if not disk or disk.taken:
            return None
        if self.count and (self.count * 2 > self.max_messages or self.bytes * 2 > self.max_bytes):
            return None
        return self.max_messages - self.count, self.max_bytes - self.bytes

    def clear(self, floor: int) -> None:
        """Forget every held message, leased, waiting or on disk, and the attempts recorded (a
        seek; the caller lists the new ones on disk). Ack ids keep counting: old ones stay void;
        a page-in under way is ignored when it arrives (`generation`)."""
        self.queue = DeliveryQueue(self.avail)
        self.leased = {}
        self.deadlines = DeadlineQueue()
        self.held = {}
        self.count = self.bytes = 0
        self._order = deque()
        self.disk = DiskBacklog()
        self.generation += 1
        self.dropped_waiting = 0
        self.exhausted_at_restore = []
        self.restored_retries = {}
        self.restored_hw = 0
        self.hw = 0
        self._floor = floor
        self.space.set()

    def floor(self, next_seq: int) -> int:
        order = self._order
        held = self.held
        while order and order[0] not in held:
            order.popleft()
        if order:
            floor = order[0]
        else:
            on_disk = self.disk.first()
            floor = next_seq if on_disk is None else on_disk
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
            return self.disk.drop(seq)
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
