"""The SQLite bus's bookkeeping on the event loop: declarations, restoring, settling, dead letters.

Private to `gateway.bus.sqlite` (whose docstring states the guarantees). Layers:
`SQLiteBusCore` (here) <- `SQLiteBusPublishing` (`_sqlite_publish`) <- `SQLiteBus` (opening,
pulling, reporting, closing). Every change to stored state is folded into
the writer's pending batch (`Writer.batch()`); changes folded in one `with` block commit
together, which keeps a dead letter and the settling of its source in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

from prometheus_client import Counter

from gateway.bus._queue import Exhausted
from gateway.bus._sqlite_ledger import MAX_FAN_OUT, Ledger
from gateway.bus._sqlite_pending import Pending
from gateway.bus._sqlite_segments import Chunk
from gateway.bus._sqlite_store import Loaded, StorageStats
from gateway.bus._sqlite_subscription import DurableSubscription
from gateway.bus._sqlite_writer import Writer
from gateway.bus.codec import CodecError, encode
from gateway.core.bus import BusClosed, OutgoingMessage, SubscriptionConfig
from gateway.core.message import dead_letter_for
from gateway.core.metrics import Metrics

log = logging.getLogger("gateway.bus.sqlite")


class SQLiteBusCore:
    """State shared by the layers of the SQLite bus, and everything but publishing and pulling."""

    def __init__(self, writer: Writer, max_bytes: int, drop_oldest: bool, metrics: Metrics | None) -> None:
        self._writer = writer
        self._max_bytes = max_bytes
        self._drop_oldest = drop_oldest
        self._metrics = metrics
        self._opened = False
        self._closed = False
        self._flushing = False
        self._sealed = False
        self._restored: Loaded | None = None
        self._topics: dict[str, tuple[DurableSubscription, ...]] = {}
        self._topic_ids: dict[str, int] = {}
        self._subs: dict[str, DurableSubscription] = {}
        self._published: dict[str, Counter] = {}
        self._ledger = Ledger(track_order=drop_oldest)
        self._disk_space = asyncio.Event()
        self._next_seq = 1
        self._next_topic_id = 1
        self._next_sub_id = 1
        self._dropped = 0

    def _load(self, loaded: Loaded) -> None:
        self._opened = True
        self._restored = loaded
        self._topic_ids = dict(loaded.topics)
        self._next_seq = loaded.next_seq
        self._next_topic_id = max(loaded.topics.values(), default=0) + 1
        self._next_sub_id = max((s.sub_id for s in loaded.subs.values()), default=0) + 1

    # -- declaration --------------------------------------------------------------------

    def create_topic(self, name: str) -> None:
        self._check_open()
        if name in self._topics:
            return
        if name not in self._topic_ids:
            self._topic_ids[name] = tid = self._next_topic_id
            self._next_topic_id += 1
            with self._writer.batch() as p:
                p.topics.append((tid, name))
        self._topics[name] = ()

    def create_subscription(self, config: SubscriptionConfig) -> None:
        """Declare a subscription; a stored one of that name resumes where it was.

        Raises KeyError for an unknown topic and ValueError for a name already declared with a
        different config. A stored subscription declared on another topic starts afresh.
        """
        self._check_open()
        existing = self._subs.get(config.name)
        if existing is not None:
            if existing.config == config:
                return
            raise ValueError(f"subscription {config.name!r} already exists with a different config")
        subs = self._topics.get(config.topic)
        if subs is None:
            raise KeyError(f"subscription {config.name!r}: topic {config.topic!r} does not exist (create_topic first)")
        if len(subs) >= MAX_FAN_OUT:
            raise ValueError(
                f"topic {config.topic!r} has {MAX_FAN_OUT} subscriptions, the most the SQLite bus supports"
            )
        tid = self._topic_ids[config.topic]
        restored = self._restored
        stored = restored.subs.pop(config.name, None) if restored is not None else None
        if restored is not None and stored is not None and stored.topic_id == tid:
            sub = DurableSubscription(config, stored.sub_id, tid, stored.floor, stored.hw)
            self._restore(sub, restored, stored.settled, stored.retries)
        else:
            if stored is not None:
                log.warning("subscription %r moved to topic %r: it starts with no backlog", config.name, config.topic)
                sid = stored.sub_id
            else:
                sid = self._next_sub_id
                self._next_sub_id += 1
            positions_lost = restored is not None and restored.positions_lost
            floor = 0 if positions_lost else self._next_seq
            sub = DurableSubscription(config, sid, tid, floor, 0)
            with self._writer.batch() as p:
                p.subs.append((sid, config.name, tid, floor))
            if restored is not None and positions_lost:
                self._restore(sub, restored, set(), {})
        self._subs[config.name] = sub
        self._topics[config.topic] = (*subs, sub)

    def _restore(self, sub: DurableSubscription, loaded: Loaded, settled: set[int], retries: dict[int, int]) -> None:
        """List the stored messages `sub` still holds on its disk backlog; the window is paged in."""
        rows = loaded.rows.get(sub.topic_id)
        if rows is not None:
            sub.restore_disk(rows, settled, self._ledger.hold_restored)
        sub.restored_retries = retries
        sub.restored_hw = sub.hw
        self._page_in(sub)

    def _page_in(self, sub: DurableSubscription) -> None:
        """Hook: fill `sub`'s window from its on-disk backlog if due (`_sqlite_paging`).
        Never call it inside a `Writer.batch()` block (it takes the same lock)."""

    def subscriptions(self) -> list[str]:
        return list(self._subs)

    def _seal(self) -> None:
        """At the first publish: forget stored subscriptions nobody declared, settle restarts' dead letters."""
        if self._sealed:
            return
        self._sealed = True
        restored, self._restored = self._restored, None
        if restored is not None and (restored.subs or restored.positions_lost):
            with self._writer.batch() as p:
                for name, stored in restored.subs.items():
                    log.warning("stored subscription %r is not configured any more: deleting it and its position", name)
                    p.unsubs.append(stored.sub_id)
                if restored.positions_lost:
                    p.meta["positions_lost"] = None
        self._ledger.sort()
        now = time.monotonic()
        for sub in self._subs.values():
            self._poll(sub, now)

    def _count_published(self, topic: str, n: int) -> None:
        if self._metrics is None:
            return
        child = self._published.get(topic)
        if child is None:
            child = self._published[topic] = self._metrics.bus_published.labels(topic)
        child.inc(n)

    # -- settling -----------------------------------------------------------------------

    def ack(self, subscription: str, ack_ids: Sequence[int]) -> None:
        sub = self._sub(subscription)
        if self._closed:
            return
        seqs = sub.settle_acks(ack_ids, time.monotonic())
        if seqs:
            with self._writer.batch() as p:
                self._settle(p, sub, seqs)
            self._page_in(sub)

    def nack(self, subscription: str, ack_ids: Sequence[int], delay: timedelta | None = None) -> None:
        """Redeliver after `delay` or the backoff; dead-letter now if attempts are exhausted."""
        sub = self._sub(subscription)
        if self._closed:
            return
        seconds = None if delay is None else max(0.0, delay.total_seconds())
        self._dead_letter(sub, sub.nack(ack_ids, seconds, time.monotonic()))

    def extend(self, subscription: str, ack_ids: Sequence[int]) -> None:
        sub = self._sub(subscription)
        if not self._closed:
            sub.extend(ack_ids, time.monotonic())

    def _settle(self, p: Pending, sub: DurableSubscription, seqs: list[int]) -> None:
        """`sub` no longer holds `seqs`: move its floor, record the ones settled above it."""
        if self._ledger.release(seqs) and not self._disk_space.is_set():
            self._disk_space.set()
        floor = sub.floor(self._next_seq)
        sid = sub.sub_id
        p.floors[sid] = floor
        if max(seqs) > floor:  # acked out of order: above an older message still held
            p.settled.extend((sid, s) for s in seqs if s > floor)

    def _poll(self, sub: DurableSubscription, now: float) -> None:
        exhausted = sub.poll(now)
        if sub.exhausted_at_restore:
            exhausted = sub.exhausted_at_restore + exhausted
            sub.exhausted_at_restore = []
        self._dead_letter(sub, exhausted)

    def _dead_letter(self, sub: DurableSubscription, exhausted: Exhausted) -> None:
        """Store and hold the dead letters of `exhausted`, and settle them, in one commit."""
        if not exhausted:
            return
        target = sub.config.dead_letter_topic
        targets = None if target is None or target == sub.config.topic else self._topics.get(target)
        letters: list[OutgoingMessage] = []
        blobs: list[bytes] = []
        if target is not None and targets:
            source = f"subscription:{sub.name}"
            for m, cause in exhausted:
                reason = f"exhausted {m.attempt} delivery attempts; last: {cause}"
                letter = dead_letter_for(m.data, reason, source=source, attempts=m.attempt)
                try:
                    blobs.append(encode(letter))
                except CodecError as exc:
                    sub.dead_letters_dropped += 1
                    log.error("subscription %r dropped a dead letter it cannot store: %s", sub.name, exc)
                    continue
                letters.append(OutgoingMessage(letter, len(letter.payload)))
        else:
            sub.dead_letters_dropped += len(exhausted)
            log.error("subscription %r dropped %d exhausted message(s): %s", sub.name, len(exhausted), _why(sub, self))
        with self._writer.batch() as p:
            if letters and target is not None and targets:
                self._hold_dead_letters(p, target, targets, letters, blobs)
            self._settle(p, sub, [m.seq for m, _ in exhausted])
        self._page_in(sub)

    def _hold_dead_letters(
        self,
        p: Pending,
        topic: str,
        targets: tuple[DurableSubscription, ...],
        letters: list[OutgoingMessage],
        blobs: list[bytes],
    ) -> None:
        first = self._next_seq
        self._next_seq += len(letters)
        publish_ns = time.time_ns()
        sizes = [o.size for o in letters]
        p.chunks.append(Chunk(first, self._topic_ids[topic], publish_ns, sizes, [None] * len(letters), blobs))
        self._ledger.hold(first, list(map(len, blobs)), len(targets))
        for t in targets:  # beyond a full window they go to its disk backlog: a dead letter never waits
            t.add_at(first, letters, 0, len(letters), sum(sizes), publish_ns)
        self._count_published(topic, len(letters))

    # -- helpers ------------------------------------------------------------------------

    def storage_stats(self) -> StorageStats:
        store = self._writer.store
        return StorageStats(
            stored_messages=store.stored_messages if store else 0,
            stored_bytes=store.stored_bytes if store else 0,
            unacked_messages=len(self._ledger),
            unacked_bytes=self._ledger.unacked_bytes,
            dropped_oldest=self._dropped,
            retention_deleted=store.retention_deleted if store else 0,
            commits=store.commits if store else 0,
        )

    def _sub(self, name: str) -> DurableSubscription:
        sub = self._subs.get(name)
        if sub is None:
            raise KeyError(f"subscription {name!r} does not exist")
        return sub

    def _check_open(self) -> None:
        if self._closed:
            if self._writer.failure is not None:
                raise self._writer.error()
            raise BusClosed("bus is closed")
        if not self._opened:
            raise RuntimeError("SQLiteBus.open() must be awaited first")

    def _wake_all(self) -> None:
        for sub in self._subs.values():
            sub.avail.set()
            sub.space.set()
        self._disk_space.set()


def _why(sub: DurableSubscription, bus: SQLiteBusCore) -> str:
    target = sub.config.dead_letter_topic
    if target is None:
        return "no dead_letter_topic is configured"
    if target == sub.config.topic:
        return f"dead_letter_topic {target!r} is the subscription's own topic"
    if target not in bus._topics:
        return f"dead_letter_topic {target!r} does not exist"
    return f"dead_letter_topic {target!r} has no subscription"
