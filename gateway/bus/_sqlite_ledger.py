"""Which stored messages some subscription still holds: the unacked backlog on disk.

Private to the SQLite bus (event loop thread only). A stored message is *unacked* while at
least one subscription of its topic holds it; its stored size counts towards
`unacked_bytes` until the last subscription settles it. That is the quantity the
`full_policy` bounds with `max_bytes`. With `track_order`, `oldest` pops unacked messages
oldest first (for `drop_oldest`).

Per message the ledger keeps one int, `stored size * 1024 + subscriptions holding it`, so a
topic may have at most `MAX_FAN_OUT` subscriptions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from gateway.bus._sqlite_segments import RECORD_OVERHEAD

MAX_FAN_OUT = 1023


class Ledger:
    """Reference counts of unacked stored messages, by sequence number."""

    def __init__(self, track_order: bool) -> None:
        self._live: dict[int, int] = {}
        self._track = track_order
        self._order: deque[int] = deque()  # ascending (after `sort`); settled ones are skipped lazily
        self.unacked_bytes = 0

    def __len__(self) -> int:
        return len(self._live)

    def hold(self, first_seq: int, data_sizes: list[int], refs: int) -> None:
        """New messages `first_seq...` (encoded data sizes `data_sizes`), held by `refs` subscriptions."""
        stop = first_seq + len(data_sizes)
        extra = RECORD_OVERHEAD * 1024 + refs
        self._live.update(zip(range(first_seq, stop), [n * 1024 + extra for n in data_sizes], strict=True))
        if self._track:
            self._order.extend(range(first_seq, stop))
        self.unacked_bytes += sum(data_sizes) + RECORD_OVERHEAD * len(data_sizes)

    def hold_restored(self, seq: int, nbytes: int) -> None:
        """One more subscription holds `seq` (at startup; call `sort` once all are restored)."""
        value = self._live.get(seq)
        if value is None:
            self._live[seq] = nbytes * 1024 + 1
            self.unacked_bytes += nbytes
        else:
            self._live[seq] = value + 1

    def sort(self) -> None:
        if self._track:
            self._order = deque(sorted(self._live))

    def release(self, seqs: list[int]) -> int:
        """One subscription settled `seqs`; return the bytes that stopped being unacked."""
        live = self._live
        freed = 0
        for s in seqs:
            value = live.get(s)
            if value is not None:
                value -= 1
                if value & 1023:
                    live[s] = value
                else:
                    del live[s]
                    freed += value >> 10
        self.unacked_bytes -= freed
        return freed

    def oldest(self) -> Iterator[int]:
        """Pop unacked messages oldest first (`track_order` only); each is forgotten when yielded."""
        order = self._order
        live = self._live
        while order:
            seq = order.popleft()
            value = live.pop(seq, None)
            if value is not None:
                self.unacked_bytes -= value >> 10
                yield seq
