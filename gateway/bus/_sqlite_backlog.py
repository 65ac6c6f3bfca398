"""The part of a durable subscription's backlog that is held on disk only, and reading it back.

Private to the SQLite bus. A durable subscription keeps in memory a window of its unacked
messages (bounded by `max_outstanding_messages` / `max_outstanding_bytes`); every further
message it holds is only stored (committed, or in the pending batch) and listed in its
`DiskBacklog`: sequence number, size and publish time, 20 bytes per message. As the window
drains, `take` hands out the next sequence numbers to page in (oldest first) and
`read_messages` reads them in the writer thread.

Invariant (kept by the bus): every message in the window has a lower sequence number than
every message in the `DiskBacklog`, so paging in oldest first keeps publish order, and the
order of each ordering key.

Taken messages stay counted (`count`, `bytes`) until `arrived` moves them to the window;
`drop` (full_policy: drop_oldest) settles a listed or taken message (taken ones are then
skipped by `arrived`).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence
from itertools import accumulate
from typing import Any, NamedTuple

from gateway.bus._sqlite_segments import StoredChunk, unpack_chunks
from gateway.bus._sqlite_store import Store
from gateway.bus.codec import CodecError, decode


class PagedRun(NamedTuple):
    """Messages read back for a page: `first_seq`, `first_seq + 1`, ... published at `publish_ns`."""

    first_seq: int
    publish_ns: int
    keys: list[str | None]
    sizes: list[int]
    data: list[Any]


_COMPACT = 1 << 16


class DiskBacklog:
    """Ascending sequence numbers (with sizes and publish times) held on disk only; see the module docstring."""

    def __init__(self) -> None:
        self._seqs = array("q")
        self._sizes = array("i")
        self._ns = array("q")
        self._head = 0  # entries before it were taken or dropped
        self._dropped: set[int] = set()  # dropped entries at or after the head
        self.taken: dict[int, tuple[int, int]] = {}  # seq -> (size, publish_ns), ascending: being paged in
        self.count = 0
        self.bytes = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def append(self, seqs: range | Sequence[int], sizes: Sequence[int], publish_ns: int | Sequence[int]) -> None:
        """List more messages, all above every one listed (and taken) so far."""
        self._seqs.extend(seqs)
        self._sizes.extend(sizes)
        if isinstance(publish_ns, int):
            self._ns.extend([publish_ns] * len(sizes))
        else:
            self._ns.extend(publish_ns)
        self.count += len(sizes)
        self.bytes += sum(sizes)

    def first(self) -> int | None:
        """The lowest sequence number held here (taken included), if any."""
        if self.taken:
            return next(iter(self.taken))
        self._skip_dropped()
        return self._seqs[self._head] if self._head < len(self._seqs) else None

    def oldest_ns(self) -> int | None:
        """The publish time of the first message held here, if any."""
        if self.taken:
            return next(iter(self.taken.values()))[1]
        self._skip_dropped()
        return self._ns[self._head] if self._head < len(self._seqs) else None

    def listed(self) -> list[tuple[int, int, int]]:
        """Every message held here as (seq, size, publish_ns), ascending (taken included)."""
        out = [(s, v[0], v[1]) for s, v in self.taken.items()]
        for k in range(self._head, len(self._seqs)):
            if self._seqs[k] not in self._dropped:
                out.append((self._seqs[k], self._sizes[k], self._ns[k]))
        return out

    def take(self, max_n: int, max_bytes: int) -> list[int]:
        """Mark the next messages (at least one if any, then while within `max_n` messages and
        `max_bytes` bytes) as being paged in; return their sequence numbers."""
        seqs, sizes, ns = self._seqs, self._sizes, self._ns
        k = self._head
        if not self._dropped:  # the usual case, column-wise: `max_n` messages, fewer if `max_bytes` says so
            stop = min(len(seqs), k + max_n)
            sums = list(accumulate(sizes[k:stop]))  # sums[i]: bytes of the first i + 1
            stop = min(stop, k + 1 + bisect.bisect_left(sums, max_bytes))
            out = seqs[k:stop].tolist()
            self.taken.update(zip(out, zip(sizes[k:stop], ns[k:stop], strict=True), strict=True))
            self._head = stop
            self._compact()
            return out
        out = []
        nbytes = 0
        while k < len(seqs) and len(out) < max_n and (not out or nbytes < max_bytes):
            seq = seqs[k]
            if seq in self._dropped:
                self._dropped.discard(seq)
            else:
                out.append(seq)
                self.taken[seq] = (sizes[k], ns[k])
                nbytes += sizes[k]
            k += 1
        self._head = k
        self._compact()
        return out

    def untake(self) -> None:
        """List the taken messages again, in front (their read failed)."""
        if not self.taken:
            return
        rest = range(self._head, len(self._seqs))
        seqs = [*self.taken, *(self._seqs[k] for k in rest)]
        sizes = [*(v[0] for v in self.taken.values()), *(self._sizes[k] for k in rest)]
        ns = [*(v[1] for v in self.taken.values()), *(self._ns[k] for k in rest)]
        self._seqs, self._sizes, self._ns = array("q", seqs), array("i", sizes), array("q", ns)
        self._head = 0
        self.taken = {}

    def arrived(self, seq: int) -> bool:
        """A taken message reached the window (True) or was dropped meanwhile (False)."""
        v = self.taken.pop(seq, None)
        if v is None:
            return False
        self.count -= 1
        self.bytes -= v[0]
        return True

    def all_arrived(self) -> None:
        """Every taken message reached the window (`arrived` for each, faster)."""
        self.count -= len(self.taken)
        self.bytes -= sum(v[0] for v in self.taken.values())
        self.taken = {}

    def drop(self, seq: int) -> bool:
        """Settle `seq` if it is held here (listed or taken); False if it is not."""
        v = self.taken.pop(seq, None)
        if v is not None:
            self.count -= 1
            self.bytes -= v[0]
            return True
        seqs = self._seqs
        k = bisect.bisect_left(seqs, seq, self._head)
        if k >= len(seqs) or seqs[k] != seq or seq in self._dropped:
            return False
        if k == self._head:
            self._head += 1
        else:
            self._dropped.add(seq)
        self.count -= 1
        self.bytes -= self._sizes[k]
        return True

    def _skip_dropped(self) -> None:
        seqs = self._seqs
        while self._dropped and self._head < len(seqs) and seqs[self._head] in self._dropped:
            self._dropped.discard(seqs[self._head])
            self._head += 1

    def _compact(self) -> None:
        if self._head >= _COMPACT and self._head * 2 >= len(self._seqs):
            del self._seqs[: self._head]
            del self._sizes[: self._head]
            del self._ns[: self._head]
            self._head = 0


def read_messages(store: Store, topic_id: int, seqs: list[int]) -> tuple[list[PagedRun], list[int]]:
    """In the writer thread: the stored messages `seqs` (ascending) of `topic_id`, decoded.

    Returns (runs, undecodable): the messages found, in ascending runs of consecutive sequence
    numbers with one publish time each. A sequence number in neither was not found (deleted).
    """
    lo, hi = seqs[0], seqs[-1]
    wanted = None if len(seqs) == hi - lo + 1 else set(seqs)  # a page is mostly one unbroken range
    runs: list[PagedRun] = []
    bad: list[int] = []
    query = (
        "SELECT first_seq, data FROM segments WHERE topic_id = ? AND last_seq >= ? AND first_seq <= ? ORDER BY last_seq"
    )
    for first, data in store.conn.execute(query, (topic_id, lo, hi)):
        try:
            for c in unpack_chunks(first, data):
                if c.first_seq > hi:
                    break
                i, j = max(lo - c.first_seq, 0), min(hi + 1 - c.first_seq, len(c.blobs))
                if i < j:
                    picked = range(i, j) if wanted is None else [k for k in range(i, j) if c.first_seq + k in wanted]
                    _decode(c, picked, runs, bad)
        except CodecError:  # damaged framing: the rest of the segment is unreadable
            continue
    return runs, bad


def _decode(c: StoredChunk, picked: Sequence[int], runs: list[PagedRun], bad: list[int]) -> None:
    """Append the messages `picked` (ascending indices) of `c` to `runs`, decoded; the
    undecodable ones to `bad`."""
    if isinstance(picked, range):
        try:
            data = list(map(decode, c.blobs[picked.start : picked.stop]))
        except CodecError:
            pass
        else:
            s = slice(picked.start, picked.stop)
            runs.append(PagedRun(c.first_seq + picked.start, c.publish_ns, c.keys[s], c.sizes[s], data))
            return
    run: PagedRun | None = None
    for k in picked:
        seq = c.first_seq + k
        try:
            value = decode(c.blobs[k])
        except CodecError:
            bad.append(seq)
            run = None
            continue
        if run is None or run.first_seq + len(run.data) != seq:
            run = PagedRun(seq, c.publish_ns, [], [], [])
            runs.append(run)
        run.keys.append(c.keys[k])
        run.sizes.append(c.sizes[k])
        run.data.append(value)
