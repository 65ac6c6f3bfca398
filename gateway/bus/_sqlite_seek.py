"""Seek on the SQLite bus: make a subscription's retained messages from a time on unacked again.

Private to `gateway.bus.sqlite` (layer `SQLiteBusSeeking`, between publishing and `SQLiteBus`).
`seek(subscription, time_ns)`:

1. Notes `cut`, the next sequence number: messages below it are stored or in the pending
   batch. In the writer thread, after that batch's commit, `read_since` reads the stored
   messages of the topic below `cut` published at or after `time_ns`, and pins the
   subscription's position there so that retention cannot delete them meanwhile.
2. Back on the event loop, in one step (nothing else runs): the subscription forgets
   everything it held below `cut` (leased ones included: their ack ids die, a pull filling
   its batch discards them) and holds the messages read, plus what it received from `cut`
   on (published during the read; those are delivered again too, leased or not). Attempt
   counts restart at 0. The unacked ledger follows.
3. The new position is folded into the pending batch as a reset of the subscription (its
   floor at the first message held, its high water at 0, its recorded attempts cleared, and
   the messages it does not hold above the floor recorded as settled), after dropping the
   changes to it still pending from before the seek (a reset lowers the floor; folded
   changes assume it only grows). `seek` returns once that is committed: it survives a
   restart.

Not promised: messages that retention deleted before the seek are not delivered again
(`SeekResult.oldest_retained_ns` says from when messages are stored); re-held messages count
towards `max_bytes` and flow control like any backlog (under `full_policy: block`
publishers may wait until the subscription has worked through them; `drop_oldest` may drop
them). Every re-held message is held in memory, as at a restart, and the read occupies the
writer thread for about what loading them at a start costs (publishes wait for their commit).
"""

from __future__ import annotations

import asyncio
import operator
import time
from dataclasses import dataclass, field

from gateway.bus._sqlite_publish import SQLiteBusPublishing
from gateway.bus._sqlite_segments import stored_size, unpack
from gateway.bus._sqlite_store import Store, StoredRows
from gateway.bus._sqlite_subscription import DROPPED, DurableSubscription
from gateway.bus.codec import CodecError, decode
from gateway.core.seek import SeekResult

_SEQ = operator.attrgetter("seq")
_FUTURE_SLACK_NS = 5_000_000_000  # a seek time this far ahead of the clock is refused


@dataclass(slots=True)
class SeekRead:
    """What `read_since` found for one topic below `cut`."""

    rows: StoredRows = field(default_factory=StoredRows)  # published at or after the time, ascending
    before: list[int] = field(default_factory=list)  # stored seqs in the scanned segments published before it
    oldest_ns: int | None = None
    undecodable: int = 0


def read_since(store: Store, sub_id: int, topic_id: int, time_ns: int, cut: int) -> SeekRead:
    """In the writer thread: the stored messages of `topic_id` below `cut` published at or
    after `time_ns`; pins `sub_id` at the first of them (see `Store.pins`)."""
    c = store.conn
    out = SeekRead()
    first_row = c.execute(
        "SELECT first_seq, data FROM segments WHERE topic_id = ? ORDER BY first_seq LIMIT 1", (topic_id,)
    ).fetchone()
    if first_row is not None:
        try:
            out.oldest_ns = next(unpack(first_row[0], first_row[1]))[1]
        except (CodecError, StopIteration):
            out.oldest_ns = None
    query = (
        "SELECT first_seq, last_seq, data FROM segments WHERE topic_id = ? AND first_seq < ? AND publish_ns >= ? "
        "ORDER BY first_seq"
    )
    for first, last, data in c.execute(query, (topic_id, cut, time_ns)):
        seen = 0
        try:
            for seq, ns, _key, size, body in unpack(first, data):
                seen += 1
                if seq >= cut:
                    break
                if ns < time_ns:
                    out.before.append(seq)
                    continue
                try:
                    decode(body)  # checked now so that the result counts what cannot be delivered
                except CodecError:
                    out.undecodable += 1
                else:
                    out.rows.add(seq, stored_size(body), size, ns)
        except CodecError:  # damaged framing: the rest of the segment is unreadable
            out.undecodable += max(0, min(last, cut - 1) - first + 1 - seen)
    if out.rows.seqs:
        store.pins[sub_id] = out.rows.seqs[0]
    return out


class SQLiteBusSeeking(SQLiteBusPublishing):
    """`SQLiteBusPublishing` plus `seek` (see the module docstring)."""

    _seek_lock: asyncio.Lock | None = None

    async def seek(self, subscription: str, time_ns: int) -> SeekResult:
        """Deliver again the retained messages of `subscription`'s topic published at or after
        `time_ns` (epoch ns); ack every earlier one. Returns once the new position is committed.

        Raises KeyError for an unknown subscription, ValueError for a time more than a few
        seconds in the future, BusClosed once the bus is closed.
        """
        sub = self._sub(subscription)
        self._check_open()
        if time_ns > time.time_ns() + _FUTURE_SLACK_NS:
            raise ValueError("the seek time is in the future: nothing was published then")
        if self._seek_lock is None:
            self._seek_lock = asyncio.Lock()
        async with self._seek_lock:
            self._seal()
            cut = self._next_seq
            sid, tid = sub.sub_id, sub.topic_id
            read = await self._writer.call(lambda store: read_since(store, sid, tid, time_ns, cut))
            self._check_open()
            redeliver, skipped, done = self._reset(sub, read, cut)
            await done
        return SeekResult(subscription, time_ns, redeliver, skipped, read.oldest_ns, read.undecodable)

    def _reset(self, sub: DurableSubscription, read: SeekRead, cut: int) -> tuple[int, int, asyncio.Future[None]]:
        """Steps 2 and 3 of the module docstring; returns (messages held, skipped, the commit's future)."""
        old = sorted(sub.held.values(), key=_SEQ)
        held = [(m.seq, m.size, m.publish_ns) for m in old] + sub.disk.listed()  # ascending: window, then disk
        kept = [h for h in held if h[0] >= cut]
        below = [h[0] for h in held if h[0] < cut]
        rows = read.rows
        again = set(rows.seqs)
        skipped = sum(1 for s in below if s not in again)
        for m in old:
            m.data = DROPPED  # a pull still filling its batch discards them (see `SQLiteBus.pull`)
        sub.dropped += 1
        floor = rows.seqs[0] if rows.seqs else kept[0][0] if kept else self._next_seq
        sub.clear(floor)
        ledger = self._ledger
        if ledger.release(below) and not self._disk_space.is_set():
            self._disk_space.set()
        for seq, nbytes in zip(rows.seqs, rows.stored, strict=True):
            ledger.hold_restored(seq, nbytes)
        ledger.sort()
        sub.disk.append(
            [*rows.seqs, *(h[0] for h in kept)], [*rows.sizes, *(h[1] for h in kept)], [*rows.ns, *(h[2] for h in kept)]
        )
        kept_seqs = {h[0] for h in kept}
        settled = [s for s in read.before if s > floor]
        settled += [s for s in range(max(cut, floor + 1), self._next_seq) if s not in kept_seqs]
        sid = sub.sub_id
        with self._writer.batch() as p:
            p.floors.pop(sid, None)
            p.hws.pop(sid, None)
            p.settled[:] = [x for x in p.settled if x[0] != sid]
            for key in [k for k in p.retries if k[0] == sid]:
                del p.retries[key]
            p.subs.append((sid, sub.name, sub.topic_id, floor))
            p.settled.extend((sid, s) for s in settled)
            done = self._writer.waiter(p)
        self._page_in(sub)
        return len(rows.seqs) + len(kept), skipped, done
