"""The SQL side of the SQLite bus: what one group commit writes, loading at startup, retention.

Private to the SQLite bus; every method runs in its writer thread.

Tables (`_sqlite_recovery.SCHEMA`): `segments` (messages keyed by the bus-wide sequence
number, many per row: `_sqlite_segments`), `subs` (per subscription: `floor`, below which
every message of its topic is settled, and `hw`, the highest sequence number whose first
delivery is recorded), `settled` (messages settled out of order, at or above the floor),
`retries` (attempt counts of messages delivered more than once), `topics`, `meta`.

A `Pending` gathers the changes made on the event loop since the last commit; `Store.apply`
writes one `Pending` in one transaction. Changes are folded so that their order inside a
`Pending` does not matter (floors and high waters only grow, sets only grow), hence every
commit leaves the database as it was after some prefix of the bus's operations.

Retention runs after a commit, in its own transaction: by time when due (every second, or
on request), and by size whenever the stored bytes exceed `max_bytes` (down to 90 % of it).
It deletes whole segments below their topic's low-water mark (the smallest floor of its
subscriptions): every message in them is settled by every subscription. A message acked out
of order above an older unacked one is kept until that one is settled, and a segment until
all its messages are, so the stored bytes can stay above `max_bytes` while an old message
is unacked.
"""

from __future__ import annotations

import sqlite3
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.bus._sqlite_pending import Pending, transaction_script
from gateway.bus._sqlite_segments import pack, stored_size, unpack
from gateway.bus.codec import CodecError, decode

_NO_LIMIT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class StorageStats:
    """Counters of the database as a whole (`SQLiteBus.storage_stats()`)."""

    stored_messages: int  # rows in the log: unacked, plus acked ones kept by retention
    stored_bytes: int  # their encoded size (the file is larger: SQLite's pages and the WAL)
    unacked_messages: int  # stored messages some subscription still holds
    unacked_bytes: int  # what `max_bytes` bounds under `full_policy`
    dropped_oldest: int  # unacked messages deleted by `full_policy: drop_oldest` since open
    retention_deleted: int  # acked messages deleted by retention since open
    commits: int  # group commits since open


@dataclass(slots=True)
class StoredSub:
    """A subscription as found in the database."""

    sub_id: int
    topic_id: int
    floor: int
    hw: int
    settled: set[int] = field(default_factory=set)
    retries: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class StoredRows:
    """Stored messages of one topic, ascending by sequence number, without their data
    (checked decodable when read; the data is paged in later): parallel arrays."""

    seqs: array[int] = field(default_factory=lambda: array("q"))
    stored: array[int] = field(default_factory=lambda: array("i"))  # what each counts towards max_bytes
    sizes: array[int] = field(default_factory=lambda: array("i"))  # the message size (flow control)
    ns: array[int] = field(default_factory=lambda: array("q"))  # publish time

    def add(self, seq: int, stored: int, size: int, ns: int) -> None:
        self.seqs.append(seq)
        self.stored.append(stored)
        self.sizes.append(size)
        self.ns.append(ns)


@dataclass(slots=True)
class Loaded:
    """The database's content at startup: what the bus needs to resume."""

    topics: dict[str, int]
    subs: dict[str, StoredSub]
    rows: dict[int, StoredRows]  # by topic id: the messages some subscription holds
    next_seq: int
    positions_lost: bool
    undecodable: list[tuple[int, int]]  # (first, last) sequence numbers of stored messages that could not be decoded


class Store:
    """Owns the connection. Counters are read by the event loop (plain ints)."""

    def __init__(self, conn: sqlite3.Connection, max_bytes: int, retention_s: float) -> None:
        self.conn = conn
        self.max_bytes = max_bytes
        self.retention_ns = int(retention_s * 1e9)
        self.stored_messages = 0
        self.stored_bytes = 0
        self.commits = 0
        self.retention_deleted = 0
        self._floors: dict[int, int] = {}
        self._sub_topic: dict[int, int] = {}
        self._topic_ids: set[int] = set()
        self.pins: dict[int, int] = {}  # sub id -> seq: retention keeps its topic's messages from there (a seek)

    def load(self) -> Loaded:
        c = self.conn
        topics = {str(name): int(tid) for tid, name in c.execute("SELECT id, name FROM topics")}
        self._topic_ids = set(topics.values())
        subs: dict[str, StoredSub] = {}
        by_id: dict[int, StoredSub] = {}
        for sid, name, tid, floor, hw in c.execute("SELECT id, name, topic_id, floor, hw FROM subs"):
            subs[name] = by_id[sid] = StoredSub(sid, tid, floor, hw)
            self._floors[sid] = floor
            self._sub_topic[sid] = tid
        for sid, seq in c.execute("SELECT sub_id, seq FROM settled"):
            if sid in by_id:
                by_id[sid].settled.add(seq)
        for sid, seq, n in c.execute("SELECT sub_id, seq, n FROM retries"):
            if sid in by_id:
                by_id[sid].retries[seq] = n
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        positions_lost = bool(meta.get("positions_lost"))
        count, nbytes, max_seq = c.execute(
            "SELECT coalesce(sum(count), 0), coalesce(sum(length(data)), 0), coalesce(max(last_seq), 0) FROM segments"
        ).fetchone()
        self.stored_messages, self.stored_bytes = count, nbytes
        floors = [s.floor for s in subs.values()]
        next_seq = max(int(meta.get("next_seq") or 1), max_seq + 1, *floors)
        rows: dict[int, StoredRows] = {}
        undecodable: list[tuple[int, int]] = []
        if floors or positions_lost:
            wanted: dict[int, list[StoredSub]] = {}
            for s in subs.values():
                wanted.setdefault(s.topic_id, []).append(s)
            start = 0 if positions_lost else min(floors)
            query = "SELECT first_seq, last_seq, topic_id, data FROM segments WHERE last_seq >= ? ORDER BY first_seq"
            for first, last, tid, data in c.execute(query, (start,)):
                holders = wanted.get(tid, [])
                if not holders and not positions_lost:
                    continue
                lowest = 0 if positions_lost else min(h.floor for h in holders)
                exact = not positions_lost and any(h.settled for h in holders)
                out = rows.get(tid)
                if out is None:
                    out = rows[tid] = StoredRows()
                seen = first - 1
                try:
                    for seq, ns, _key, size, body in unpack(first, data):
                        seen = seq
                        if seq < lowest or (exact and all(seq < h.floor or seq in h.settled for h in holders)):
                            continue
                        try:
                            decode(body)  # checked now so that what is lost is reported at open
                        except CodecError:
                            _add_range(undecodable, seq, seq)
                        else:
                            out.add(seq, stored_size(body), size, ns)
                except CodecError:  # the segment's framing is damaged: the rest of it is unreadable
                    _add_range(undecodable, seen + 1, last)
        for tid, out in rows.items():
            if any(a > b for a, b in zip(out.seqs, out.seqs[1:], strict=False)):  # segments of one topic do not overlap
                order = sorted(range(len(out.seqs)), key=out.seqs.__getitem__)
                rows[tid] = StoredRows(
                    *(array(c.typecode, [c[k] for k in order]) for c in (out.seqs, out.stored, out.sizes, out.ns))
                )
        return Loaded(topics, subs, rows, next_seq, positions_lost, undecodable)

    def apply(self, p: Pending, retention_due: bool) -> None:
        """Write `p` in one transaction; then, in their own transactions, retention when due
        and trimming when the stored bytes exceed `max_bytes`."""
        c = self.conn
        segments = pack(p.chunks) if p.chunks else []
        try:
            c.executescript(transaction_script(p))
            if segments:
                c.executemany(
                    "INSERT INTO segments (first_seq, last_seq, topic_id, publish_ns, count, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    segments,
                )
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        self.commits += 1
        self._topic_ids.update(tid for tid, _ in p.topics)
        for sid, _, tid, floor in p.subs:
            self._floors[sid] = floor
            self._sub_topic[sid] = tid
            self.pins.pop(sid, None)
        for sid in p.unsubs:
            self._floors.pop(sid, None)
            self._sub_topic.pop(sid, None)
        for sid, floor in p.floors.items():
            if sid in self._floors:
                self._floors[sid] = floor
        self.stored_messages += sum(len(c.blobs) for c in p.chunks)
        self.stored_bytes += sum(len(seg[5]) for seg in segments)
        if retention_due or p.retention:
            self._in_transaction(self._retain_by_time)
        if self.stored_bytes > self.max_bytes:
            self._in_transaction(self._trim_to_size)

    def _in_transaction(self, work: Callable[[], None]) -> None:
        c = self.conn
        c.execute("BEGIN")
        try:
            work()
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def _low_waters(self) -> dict[int, int]:
        """Per topic, the sequence number below which every message is settled by all its subscriptions."""
        lw = dict.fromkeys(self._topic_ids, _NO_LIMIT)
        for sid, floor in self._floors.items():
            tid = self._sub_topic[sid]
            floor = min(floor, self.pins.get(sid, floor))
            if floor < lw.get(tid, _NO_LIMIT):
                lw[tid] = floor
        return lw

    def _retain_by_time(self) -> None:
        """Delete settled segments whose newest message was published before now - retention."""
        cutoff = time.time_ns() - self.retention_ns
        c = self.conn
        # publish times rise with sequence numbers (wall clock permitting): bound the scan by the first young segment
        row = c.execute(
            "SELECT first_seq FROM segments WHERE publish_ns >= ? ORDER BY first_seq LIMIT 1", (cutoff,)
        ).fetchone()
        boundary = _NO_LIMIT if row is None else row[0]
        for tid, lw in self._low_waters().items():
            deleted = c.execute(
                "DELETE FROM segments WHERE last_seq < ? AND topic_id = ? AND publish_ns < ? "
                "RETURNING count, length(data)",
                (min(boundary, lw), tid, cutoff),
            ).fetchall()
            self._deleted(deleted)

    def _trim_to_size(self) -> None:
        """Delete the oldest settled segments until the stored bytes are at most 90 % of `max_bytes`
        (the margin keeps this from running at every commit), if there are enough of them."""
        target = self.max_bytes * 9 // 10
        c = self.conn
        while self.stored_bytes > target:
            candidates: list[tuple[int, int, int]] = []  # (first_seq, count, bytes), deletable only
            for tid, lw in self._low_waters().items():
                candidates += c.execute(
                    "SELECT first_seq, count, length(data) FROM segments WHERE last_seq < ? AND topic_id = ? "
                    "ORDER BY last_seq LIMIT 256",
                    (lw, tid),
                ).fetchall()
            if not candidates:
                return
            candidates.sort()
            victims: list[int] = []
            sizes: list[tuple[int, int]] = []
            freed = 0
            for first, count, n in candidates:
                victims.append(first)
                sizes.append((count, n))
                freed += n
                if self.stored_bytes - freed <= target:
                    break
            c.execute(f"DELETE FROM segments WHERE first_seq IN ({','.join(map(str, victims))})")
            self._deleted(sizes)

    def _deleted(self, segments: list[tuple[int, int]]) -> None:
        """Account for deleted segments given as (message count, stored bytes)."""
        count = sum(n for n, _ in segments)
        self.stored_messages -= count
        self.stored_bytes -= sum(b for _, b in segments)
        self.retention_deleted += count

    def close(self) -> None:
        self.conn.close()


def _add_range(ranges: list[tuple[int, int]], first: int, last: int) -> None:
    """Append `first..last` to ascending `ranges`, joining it to the last one where they touch."""
    if ranges and ranges[-1][1] + 1 >= first:
        ranges[-1] = (ranges[-1][0], max(last, ranges[-1][1]))
    else:
        ranges.append((first, last))
