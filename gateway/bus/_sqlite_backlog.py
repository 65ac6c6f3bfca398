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

from gateway.bus._sqlite_segments import unpack
from gateway.bus._sqlite_store import Store
from gateway.bus.codec import CodecError, decode

PagedRow = tuple[int, str | None, int, object]  # publish_ns, ordering key, size, data
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
        out: list[int] = []
        nbytes = 0
        seqs, sizes, ns = self._seqs, self._sizes, self._ns
        k = self._head
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


def read_messages(store: Store, topic_id: int, seqs: list[int]) -> tuple[dict[int, PagedRow], list[int]]:
    """In the writer thread: the stored messages `seqs` (ascending) of `topic_id`, decoded.

    Returns (found, undecodable). A sequence number in neither was not found (deleted).
    """
    wanted = set(seqs)
    found: dict[int, PagedRow] = {}
    bad: list[int] = []
    lo, hi = seqs[0], seqs[-1]
    query = (
        "SELECT first_seq, data FROM segments WHERE topic_id = ? AND last_seq >= ? AND first_seq <= ? ORDER BY last_seq"
    )
    for first, data in store.conn.execute(query, (topic_id, lo, hi)):
        try:
            for seq, ns, key, size, body in unpack(first, data):
                if seq > hi:
                    break
                if seq in wanted:
                    try:
                        found[seq] = (ns, key, size, decode(body))
                    except CodecError:
                        bad.append(seq)
        except CodecError:  # damaged framing: the rest of the segment is unreadable
            continue
    return found, bad
