"""Paging on the SQLite bus: filling each subscription's in-memory window from its on-disk backlog.

Private to `gateway.bus.sqlite` (layer `SQLiteBusPaging`, between `SQLiteBusCore` and
publishing). A durable subscription holds in memory only a window of its unacked messages
(`max_outstanding_*`); the rest of its backlog is stored only (`DiskBacklog`). Whenever the
window is at most half full and something is on disk, `_page_in` takes the next messages off
the disk list, oldest first, up to the window's room, and has the writer thread read them
after its next commit (so everything published before is committed by then). When they
arrive, `_paged` moves them into the window, in sequence order: every message in the window
is older than every one on disk, so publish order and each ordering key's order hold across
pages. Mostly one read per subscription is under way; when drops (`full_policy:
drop_oldest`) settle every message of a read under way, the next may start before it ends.
Reads end in the order they started, and each moves in only those of its own messages still
taken.

A read that arrives after a seek of its subscription (`generation` changed) or after the bus
closed is ignored; messages dropped meanwhile (`full_policy: drop_oldest`) are skipped. A
message that can no longer be read (its data undecodable, or its row missing: it cannot
happen unless the file was damaged under the running bus) is settled and logged as lost.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.bus._sqlite_backlog import PagedRun, read_messages
from gateway.bus._sqlite_bus import SQLiteBusCore
from gateway.bus._sqlite_subscription import DurableSubscription
from gateway.core.bus import BusClosed

log = logging.getLogger("gateway.bus.sqlite")
ReadResult = tuple[list[PagedRun], list[int]]


class SQLiteBusPaging(SQLiteBusCore):
    """`SQLiteBusCore` plus paging (see the module docstring)."""

    pages_read = 0  # reads issued since open (for tests and debugging)

    def _page_in(self, sub: DurableSubscription) -> None:
        """Start reading the next page of `sub`'s on-disk backlog if it is due (see the module docstring)."""
        if self._closed or not self._opened:
            return
        room = sub.page_room()
        if room is None:
            return
        seqs = sub.disk.take(max(1, room[0]), max(1, room[1]))
        if not seqs:
            return
        self.pages_read += 1
        tid, gen = sub.topic_id, sub.generation
        fut = self._writer.call(lambda store: read_messages(store, tid, seqs))
        fut.add_done_callback(lambda f: self._paged(sub, gen, seqs, f))

    def _paged(self, sub: DurableSubscription, gen: int, seqs: list[int], fut: asyncio.Future[ReadResult]) -> None:
        """A read of `_page_in` finished: move what arrived into the window, settle what is lost."""
        if fut.cancelled() or sub.generation != gen or self._closed:
            return
        exc = fut.exception()
        if exc is not None:
            if not isinstance(exc, BusClosed):
                log.error("subscription %r: reading its backlog from disk failed: %s", sub.name, exc)
            sub.disk.untake()  # read again at the next chance (an ack, a pull)
            return
        runs, bad = fut.result()
        lost = sub.paged_in(seqs, runs)
        if lost:
            bad_set = set(bad)
            log.error(
                "subscription %r: %d stored message(s) of its backlog are lost (%d undecodable, the rest missing; "
                "sequence numbers %s%s)",
                sub.name,
                len(lost),
                sum(1 for s in lost if s in bad_set),
                ", ".join(map(str, lost[:10])),
                " ..." if len(lost) > 10 else "",
            )
            self._lose(sub, lost)
        if self._sealed:  # else at the first publish, once every subscription is declared
            self._poll(sub, time.monotonic())  # dead-letters what exhausted its attempts before a restart
        self._page_in(sub)  # the page may have been thinned by drops

    def _lose(self, sub: DurableSubscription, seqs: list[int]) -> None:
        with self._writer.batch() as p:
            self._settle(p, sub, seqs)
