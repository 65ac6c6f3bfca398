"""The durable bus backend: the `gateway.core.bus.Bus` contract on an embedded SQLite log.

Delivery follows the memory bus (it reuses its subscription logic: fan-out, work queues,
leases, ack deadlines, backoff with jitter, dead letters, ordering, batching; see
`gateway.bus.memory` for the fine print, which applies here too), except flow control. What
this backend adds:

* **A disk-backed backlog.** For this backend a subscription's `max_outstanding_messages` /
  `max_outstanding_bytes` bound its *in-memory window*, not its backlog: once the window is
  full, further messages are held on disk only (about 20 bytes of bookkeeping in memory
  each, plus the unacked ledger's entry) and paged in, oldest first, as acks drain the
  window below half (`_sqlite_paging`). A full window never makes `publish` wait; only the
  disk bound does (below). Publish order and each ordering key's order hold across pages
  (everything in the window is older than everything on disk). `stats().backlog` (and
  `gateway_subscription_backlog`) count the whole backlog, on disk included. Dead letters
  beyond a full window also go to disk (`accepted_over_limit` stays 0).

* **Durability of publish.** `publish` returns once its messages are committed (group
  commit in one writer thread: publishes arriving during a commit share the next one). With
  `synchronous: full` a committed message survives power loss and OS crashes (the WAL is
  fsynced at each commit); with `normal` it survives a crash or `kill -9` of the process but
  not of the machine (fsync only at checkpoints). Either way the database stays consistent:
  a torn last write is rolled back by SQLite's WAL checksums. Consumers may see a message
  before its `publish` returns. Not promised: a `publish` that raised or was cancelled may
  still have stored a prefix (as with the memory bus).
* **Positions survive restarts.** Acks, dead letters (with the settling of their source) and
  drops are committed with the next group commit (`ack` does not wait): after a crash,
  messages whose ack was not committed yet are delivered again (at least once); a committed
  ack is never undone.
* **Attempts survive restarts.** A pull records its deliveries durably before it returns the
  batch. After a restart a message resumes with its recorded attempt count, and one whose
  last recorded attempt reached `max_delivery_attempts` (its lease was cut by the stop) is
  dead-lettered without another delivery: a message that crashes the process cannot loop.
  Approximations: first deliveries are recorded as a per-subscription high-water sequence
  number, so a message that was passed over (an ordering key waiting, a backoff) may count
  one attempt it did not have; a pull cancelled after recording counts one too many; a
  message known only through the high water is not dead-lettered at restore (it gets one
  more delivery). Backoff delays and lease deadlines are not stored: restored messages are
  deliverable at once.
* **Retention.** Acked messages stay stored for `retention`; while the stored bytes exceed
  `max_bytes`, the oldest acked ones are deleted first. Only messages older than every
  unacked message of their topic are deleted (`_sqlite_store`).
* **Seek.** `seek(subscription, time_ns)` re-delivers retained messages, durably (`_sqlite_seek`).
* **Disk bound.** A message counts its encoded data plus 12 bytes towards `max_bytes`. When
  the unacked backlog (messages some subscription still holds, in its window or on disk)
  would exceed it:
  `full_policy: block` makes `publish` wait (backpressure, counted in
  `publish_blocked_seconds`); `drop_oldest` settles the oldest unacked messages for every
  subscription (leased, waiting or on disk only; their ack ids die), logs a warning and
  counts them
  (`storage_stats().dropped_oldest`, metric `gateway_bus_dropped_oldest_total`). Dead
  letters are always stored. The file itself is larger than the stored bytes (SQLite
  pages, the WAL up to 64 MiB at rest); `refresh_metrics` exports `gateway_bus_stored_bytes`,
  `gateway_bus_stored_messages` and `gateway_bus_unacked_bytes`.
* **Recovery.** `open()` runs `PRAGMA quick_check` (about 20 ms per 50 MB here); a damaged
  file is moved aside and what can be read is carried over (`recovery_report` says what was
  lost; `_sqlite_recovery`). Every unacked message is checked decodable at open (about
  20 µs each here), but only each subscription's window is loaded into memory: the rest of
  its backlog is listed on disk and paged in (a restart resumes mid-backlog in order).
* Subscriptions are matched by name across restarts (their settings may change). A stored
  subscription not declared again by the first `publish` is deleted with its position
  (logged). Counters in `stats` restart at zero; the backlog does not.
* After `close()`, `ack`/`nack`/`extend` are ignored (those messages come again after a
  restart). A database failure (disk full, I/O error) closes the bus: `publish` and `pull`
  raise `BusStorageError`, a `BusClosed`.

Cost, measured on the 2-core test machine: a lone `publish` waits about 0.4 ms
(`normal`) or 1.4 ms (`full`) for its commit; under load, publish + pull + ack of ~100-byte
readings runs at roughly half the memory bus's rate, the event loop spending the extra on
encoding and bookkeeping and on sharing the GIL with the writer thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import operator
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from gateway.bus._queue import Held
from gateway.bus._sqlite_recovery import BusOpenError, RecoveryReport
from gateway.bus._sqlite_seek import SQLiteBusSeeking
from gateway.bus._sqlite_store import StorageStats
from gateway.bus._sqlite_subscription import DurableSubscription
from gateway.bus._sqlite_writer import BusStorageError, Writer
from gateway.bus.memory import DeadLetterCounters
from gateway.core.bus import ReceivedMessage, SubscriptionStats
from gateway.core.duration import Duration
from gateway.core.metrics import Metrics

__all__ = [
    "BusOpenError",
    "BusStorageError",
    "DeadLetterCounters",
    "RecoveryReport",
    "SQLiteBus",
    "SQLiteBusConfig",
    "StorageStats",
]

log = logging.getLogger("gateway.bus.sqlite")
_ATTEMPT = operator.attrgetter("attempt")
_SEQ = operator.attrgetter("seq")


class SQLiteBusConfig(BaseModel):
    """The durable bus's storage settings (subscriptions are configured as for any bus)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="Database file; default <data_dir>/bus.db; relative to data_dir.")
    synchronous: Literal["full", "normal"] = Field(
        "full",
        description="full: a published message survives power loss; normal: faster, survives a crash of the process.",
    )
    commit_interval: Duration = Field(
        timedelta(0),
        description="Longest wait for more publishes before a group commit (0: commit at once; "
        "publishes arriving during a commit always share the next one).",
    )
    retention: Duration = Field(timedelta(hours=24), description="How long acked messages stay stored.")
    max_bytes: PositiveInt = Field(
        1 << 30,
        description="Bound on stored bytes (encoded data + 12 per message): acked messages are trimmed "
        "to stay under it; the unacked backlog may not exceed it (full_policy).",
    )
    full_policy: Literal["block", "drop_oldest"] = Field(
        "block", description="When the unacked backlog reaches max_bytes: publishers wait, or the oldest is dropped."
    )


class SQLiteBus(SQLiteBusSeeking):
    """A durable `Bus`. Construct (no I/O), `await open()`, declare topics and subscriptions, use,
    `await close()`. All methods must be called from the event loop that called `open()`."""

    def __init__(self, config: SQLiteBusConfig, data_dir: Path, metrics: Metrics | None = None) -> None:
        path = Path(config.path).expanduser() if config.path is not None else Path("bus.db")
        self.path = path if path.is_absolute() else data_dir / path
        self.config = config
        self.recovery_report: RecoveryReport | None = None
        writer = Writer(
            self.path,
            config.synchronous,
            config.commit_interval.total_seconds(),
            config.max_bytes,
            config.retention.total_seconds(),
            self._storage_failed,
        )
        super().__init__(writer, config.max_bytes, config.full_policy == "drop_oldest", metrics)

    async def open(self) -> None:
        """Open, create or recover the database and load what subscriptions still hold.

        Raises BusOpenError when the file cannot be used (see `_sqlite_recovery`); a damaged
        file is not an error: it is replaced, and `recovery_report` says what was lost.
        """
        if self._opened:
            raise RuntimeError("SQLiteBus.open() was already called")
        loaded, report = await self._writer.start()
        undecodable = sum(last - first + 1 for first, last in loaded.undecodable)
        if undecodable:
            ranges = [f"{a}..{b}" if b > a else str(a) for a, b in loaded.undecodable]
            shown = ", ".join(ranges[:50]) + (f" and {len(ranges) - 50} more ranges" if len(ranges) > 50 else "")
            line = f"{undecodable} stored message(s) could not be decoded and are lost (sequence numbers {shown})"
            log.error("bus database recovery: %s", line)
            report = dataclasses.replace(report, lost=(*report.lost, line))
        store = self._writer.store
        if not report.corrupt and store is not None:
            report = dataclasses.replace(report, messages_recovered=store.stored_messages)
        report = dataclasses.replace(report, messages_recovered=max(0, report.messages_recovered - undecodable))
        self.recovery_report = report
        self._load(loaded)
        log.info(
            "bus database %s opened: %d stored message(s)%s",
            self.path,
            self._writer.store.stored_messages if self._writer.store else 0,
            " (recovered from a damaged file)" if report.corrupt else "",
        )

    async def pull(self, subscription: str) -> list[ReceivedMessage]:
        """Lease the next batch (see `Bus.pull`); its deliveries are committed before it is returned.

        Raises KeyError for an unknown subscription and BusClosed once the bus is closed.
        A cancelled pull gives its messages back (their attempt may stay recorded).
        """
        sub = self._sub(subscription)
        batch: list[Held] = []
        nbytes = 0
        first: float | None = None
        drops = sub.dropped
        try:
            while True:
                self._check_open()
                now = time.monotonic()
                self._poll(sub, now)
                nbytes, full = sub.take(batch, nbytes, now)
                if sub.dropped_waiting or sub.dropped != drops:  # full_policy: drop_oldest struck
                    drops = sub.dropped
                    kept = len(batch)
                    nbytes -= sub.discard_dropped(batch, 0, now)
                    if len(batch) != kept:
                        continue
                timeout: float | None = None
                if batch:
                    if first is None:
                        first = now
                    if full or self._flushing or now - first >= sub.batch_latency:
                        await self._record_deliveries(sub, batch)
                        self._check_open()
                        if sub.dropped != drops:  # dropped while the deliveries were committed
                            drops = sub.dropped
                            nbytes -= sub.discard_dropped(batch, 0, time.monotonic())
                        if batch:
                            return sub.finalize(batch, time.monotonic())
                        first = None
                        continue
                    timeout = first + sub.batch_latency - now
                self._page_in(sub)  # a safety net: acks and drops start reads as the window drains
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

    async def _record_deliveries(self, sub: DurableSubscription, batch: list[Held]) -> None:
        """Commit the attempts of `batch` (first deliveries as the high water, the others one by one)."""
        sid = sub.sub_id
        hw = sub.hw
        retries: dict[tuple[int, int], int] = {}
        if max(map(_ATTEMPT, batch)) == 1:  # the common case: first deliveries only
            hw = max(hw, max(map(_SEQ, batch)))
        else:
            for m in batch:
                if m.attempt > 1:
                    retries[sid, m.seq] = m.attempt
                elif m.seq > hw:
                    hw = m.seq
        if hw == sub.hw and not retries:
            return
        sub.hw = hw
        with self._writer.batch() as p:
            p.hws[sid] = hw
            p.retries.update(retries)
            done = self._writer.waiter(p)
        await done

    def stats(self, subscription: str) -> SubscriptionStats:
        """Counters of one subscription since `open()` (backlog: everything it holds, in memory
        and on disk, restored included; the oldest age is approximate while its window is empty)."""
        sub = self._sub(subscription)
        if not self._closed:
            self._poll(sub, time.monotonic())
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
        storage = self.storage_stats()
        m.bus_stored_bytes.set(storage.stored_bytes)
        m.bus_stored_messages.set(storage.stored_messages)
        m.bus_unacked_bytes.set(storage.unacked_bytes)

    async def enforce_retention(self) -> None:
        """Run time-based retention now (it also runs every second) and wait for its commit."""
        self._check_open()
        with self._writer.batch() as p:
            p.retention = True
            done = self._writer.waiter(p)
        await done

    async def close(self) -> None:
        """Commit what is pending and close the database; pending and later `pull`/`publish`
        calls raise BusClosed. Idempotent."""
        self._closed = True
        self._wake_all()
        await self._writer.stop()

    def _storage_failed(self, exc: BaseException) -> None:
        self._closed = True
        self._wake_all()


async def _wait(event: asyncio.Event, within: float | None) -> None:
    """Wait until `event` is set or `within` seconds pass (None: no limit)."""
    if within is None:
        await event.wait()
        return
    try:
        async with asyncio.timeout(max(0.0, within)):
            await event.wait()
    except TimeoutError:
        pass
