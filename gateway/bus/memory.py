"""The in-memory bus backend: the `gateway.core.bus.Bus` contract within one process.

What this backend adds to (or leaves out of) the contract:

* Nothing survives a restart. Message `data` is shared, not copied, between subscriptions:
  consumers must not mutate it.
* Ack ids are per delivery. Once a lease is nacked or has expired, its ack id is dead: an
  ack with it is ignored and the message is delivered again under a new id (at-least-once).
* No background task and no timer per message: deadlines and backoffs are checked lazily
  by `pull` (whose wait never outlasts the next deadline or backoff) and by `stats`. A
  subscription nobody pulls from keeps its expired leases until someone pulls or asks for
  stats.
* `publish` of a list is not atomic under backpressure: it hands over the prefix that fits,
  then waits. If it is cancelled or the bus closes meanwhile, that prefix stays published.
  A subscription takes a message while it is below its limits, so it may exceed
  `max_outstanding_bytes` by one message. Messages go to the subscriptions that existed
  when `publish` was called.
* Redeliveries (after their backoff) come before fresh messages.
* With ordering, one batch may carry several messages of one key, in publish order; the
  consumer handles them in that order and, if it nacks one, nacks the later ones of that key
  in the batch too (an ack of a later one is honoured: the bus cannot tell it was premature).
  Messages without an ordering key are not ordered.
* Dead letters are accepted by the dead-letter topic's subscriptions even beyond their flow
  control limits, so that a full dead-letter subscription cannot block the bus; each such
  message is logged and counted (`dead_letter_counters(...).accepted_over_limit`). With no
  `dead_letter_topic`, or one that does not exist, has no subscription or is the
  subscription's own topic (a loop), exhausted messages are dropped, logged as an error and
  counted (`dead_letter_counters(...).dropped`). Either way they count as `dead_lettered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import Counter

from gateway.bus._queue import Exhausted, Held
from gateway.bus._subscription import Subscription
from gateway.core.bus import BusClosed, OutgoingMessage, ReceivedMessage, SubscriptionConfig, SubscriptionStats
from gateway.core.bus import resolved as resolved_future
from gateway.core.message import dead_letter_for
from gateway.core.metrics import Metrics
from gateway.core.seek import SeekResult, SeekUnsupported

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetterCounters:
    """Dead-letter events of one subscription that `SubscriptionStats` does not show."""

    dropped: int  # exhausted messages of this subscription that had nowhere to go
    accepted_over_limit: int  # dead letters this subscription took beyond its limits


class MemoryBus:
    """An in-process `Bus`. All methods must be called from one event loop's thread."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self._topics: dict[str, tuple[Subscription, ...]] = {}
        self._subs: dict[str, Subscription] = {}
        self._published: dict[str, Counter] = {}
        self._closed = False
        self._flushing = False

    # -- declaration --------------------------------------------------------------------

    def create_topic(self, name: str) -> None:
        self._topics.setdefault(name, ())

    def create_subscription(self, config: SubscriptionConfig) -> None:
        """Declare a subscription; it receives messages published from now on.

        Raises KeyError for an unknown topic and ValueError for a name already used with a
        different config.
        """
        existing = self._subs.get(config.name)
        if existing is not None:
            if existing.config == config:
                return
            raise ValueError(f"subscription {config.name!r} already exists with a different config")
        subs = self._topics.get(config.topic)
        if subs is None:
            raise KeyError(f"subscription {config.name!r}: topic {config.topic!r} does not exist (create_topic first)")
        sub = Subscription(config)
        self._subs[config.name] = sub
        self._topics[config.topic] = (*subs, sub)

    def subscriptions(self) -> list[str]:
        return list(self._subs)

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> int:
        """Hold every message for every subscription of `topic`, waiting while one is full.

        Raises KeyError for an unknown topic and BusClosed once the bus is closed.
        """
        if self._closed:
            raise BusClosed("bus is closed")
        subs = self._topics.get(topic)
        if subs is None:
            raise KeyError(f"topic {topic!r} does not exist (create_topic first)")
        n = len(messages)
        if not subs or not n:
            return len(subs)
        start = 0
        blocked = 0.0
        try:
            while start < n:
                stop, nbytes = _fit(subs, messages, start)
                if stop > start:
                    publish_ns = time.time_ns()
                    for sub in subs:
                        sub.add(messages, start, stop, nbytes, publish_ns)
                    self._count_published(topic, stop - start)
                    start = stop
                    continue
                full = next(s for s in subs if s.full)
                t0 = time.monotonic()
                full.space.clear()
                try:
                    await full.space.wait()
                finally:
                    blocked += time.monotonic() - t0
                if self._closed:
                    raise BusClosed(f"bus closed while publishing to {topic!r}")
        finally:
            if blocked and self._metrics is not None:
                self._metrics.publish_blocked_seconds.labels(topic).inc(blocked)
        return len(subs)

    async def hand_over(self, topic: str, messages: Sequence[OutgoingMessage]) -> asyncio.Future[None]:
        """`publish`, returning a resolved future: held in memory is all this backend promises."""
        await self.publish(topic, messages)
        return resolved_future()

    def _count_published(self, topic: str, n: int) -> None:
        if self._metrics is not None:
            if (child := self._published.get(topic)) is None:
                child = self._published[topic] = self._metrics.bus_published.labels(topic)
            child.inc(n)

    # -- consuming ----------------------------------------------------------------------

    async def pull(self, subscription: str) -> list[ReceivedMessage]:
        """Lease the next batch: full, or `max_latency` after its first message was taken.

        Raises KeyError for an unknown subscription and BusClosed once the bus is closed.
        A cancelled pull gives its messages back untouched (no attempt counted).
        """
        sub = self._sub(subscription)
        batch: list[Held] = []
        nbytes = 0
        first: float | None = None
        try:
            while True:
                if self._closed:
                    raise BusClosed("bus is closed")
                now = time.monotonic()
                self._dead_letter(sub, sub.poll(now))
                nbytes, full = sub.take(batch, nbytes, now)
                timeout: float | None = None
                if batch:
                    if first is None:
                        first = now
                    if full or self._flushing or now - first >= sub.batch_latency:
                        return sub.finalize(batch, now)
                    timeout = first + sub.batch_latency - now
                wake = sub.next_wakeup()
                if wake is not None and (timeout is None or wake - now < timeout):
                    timeout = wake - now
                sub.avail.clear()
                await _wait(sub.avail, timeout)
        except BaseException:
            if batch:
                sub.release(batch, time.monotonic())
            raise

    def flush(self) -> None:
        """From now on `pull` returns as soon as it has a message (used to drain on stop)."""
        self._flushing = True
        for sub in self._subs.values():
            sub.avail.set()

    def ack(self, subscription: str, ack_ids: Sequence[int]) -> None:
        self._sub(subscription).ack(ack_ids, time.monotonic())

    def nack(self, subscription: str, ack_ids: Sequence[int], delay: timedelta | None = None) -> None:
        """Redeliver after `delay` or the backoff; dead-letter now if attempts are exhausted."""
        sub = self._sub(subscription)
        seconds = None if delay is None else max(0.0, delay.total_seconds())
        self._dead_letter(sub, sub.nack(ack_ids, seconds, time.monotonic()))

    def extend(self, subscription: str, ack_ids: Sequence[int]) -> None:
        self._sub(subscription).extend(ack_ids, time.monotonic())

    # -- reporting ----------------------------------------------------------------------

    def stats(self, subscription: str) -> SubscriptionStats:
        """Counters of one subscription, after expiring the leases whose deadline passed."""
        sub = self._sub(subscription)
        self._dead_letter(sub, sub.poll(time.monotonic()))
        return sub.stats(time.time_ns())

    def dead_letter_counters(self, subscription: str) -> DeadLetterCounters:
        sub = self._sub(subscription)
        return DeadLetterCounters(dropped=sub.dead_letters_dropped, accepted_over_limit=sub.accepted_over_limit)

    def refresh_metrics(self) -> None:
        """Copy every subscription's stats into the bus gauges (call before a scrape)."""
        m = self._metrics
        if m is None:
            return
        for name in self._subs:
            st = self.stats(name)
            m.bus_backlog.labels(name).set(st.backlog)
            m.bus_backlog_bytes.labels(name).set(st.backlog_bytes)
            m.bus_oldest_unacked.labels(name).set(st.oldest_unacked_age_s)
            m.bus_dead_lettered.labels(name).set(st.dead_lettered)
            m.bus_expired.labels(name).set(st.expired)

    async def seek(self, subscription: str, time_ns: int) -> SeekResult:
        """Not possible here: the memory bus keeps no acked message. Raises SeekUnsupported."""
        self._sub(subscription)
        raise SeekUnsupported("seek needs the durable sqlite bus (bus.type: sqlite): memory keeps no acked message")

    async def close(self) -> None:
        """Make pending and future `pull`/`publish` calls raise BusClosed. Idempotent."""
        self._closed = True
        for sub in self._subs.values():
            sub.avail.set()
            sub.space.set()

    # -- internals ----------------------------------------------------------------------

    def _sub(self, name: str) -> Subscription:
        sub = self._subs.get(name)
        if sub is None:
            raise KeyError(f"subscription {name!r} does not exist")
        return sub

    def _dead_letter(self, sub: Subscription, exhausted: Exhausted) -> None:
        if not exhausted:
            return
        target = sub.config.dead_letter_topic
        targets = None if target is None or target == sub.config.topic else self._topics.get(target)
        if target is None or not targets:
            sub.dead_letters_dropped += len(exhausted)
            if target is None:
                why = "no dead_letter_topic is configured"
            elif target == sub.config.topic:
                why = f"dead_letter_topic {target!r} is the subscription's own topic"
            elif target not in self._topics:
                why = f"dead_letter_topic {target!r} does not exist"
            else:
                why = f"dead_letter_topic {target!r} has no subscription"
            log.error("subscription %r dropped %d exhausted message(s): %s", sub.name, len(exhausted), why)
            return
        source = f"subscription:{sub.name}"
        letters: list[OutgoingMessage] = []
        for m, cause in exhausted:
            reason = f"exhausted {m.attempt} delivery attempts; last: {cause}"
            letter = dead_letter_for(m.data, reason, source=source, attempts=m.attempt)
            letters.append(OutgoingMessage(letter, len(letter.payload)))
        publish_ns = time.time_ns()
        for t in targets:
            over = t.add_forced(letters, publish_ns)
            if over:
                log.warning("subscription %r took %d dead letter(s) beyond its flow-control limits", t.name, over)
        self._count_published(target, len(letters))


def _fit(subs: tuple[Subscription, ...], messages: Sequence[OutgoingMessage], start: int) -> tuple[int, int]:
    """The end of the run of messages from `start` that every subscription can take now, and its bytes."""
    room_n = min(s.max_messages - s.count for s in subs)
    room_b = min(s.max_bytes - s.bytes for s in subs)
    if room_n <= 0 or room_b <= 0:
        return start, 0
    stop = min(len(messages), start + room_n)
    nbytes = 0
    k = start
    while k < stop and nbytes < room_b:
        nbytes += messages[k].size
        k += 1
    return k, nbytes


async def _wait(event: asyncio.Event, within: float | None) -> None:
    """Wait until `event` is set or `within` seconds pass (None: no limit)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(None if within is None else max(0.0, within)):
            await event.wait()
