"""What a group commit writes: the `Pending` changes, and one SQL script for the small ones.

Private to the SQLite bus. The event loop folds changes into a `Pending` (`Writer.batch()`);
`Store.apply` writes it. Why a script: the writer thread releases the
GIL around every SQLite call and must then win it back from the event loop, which can take
up to the interpreter's switch interval (5 ms) while the loop is busy. `executescript` runs
a whole script in one call, so a commit costs three such hand-overs (this script, which also
begins the transaction; the insert of the segments, whose blobs are bound as parameters; the
commit) instead of one per statement.

Only integers (from the bus's own state) and names (as hex blob literals cast to text) are
written into the SQL, so no value from a message ever becomes SQL text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from gateway.bus._sqlite_segments import Chunk

_CHUNK = 500  # rows per multi-row VALUES clause


class Pending:
    """Changes waiting for the next commit, and the futures to resolve when it is done."""

    __slots__ = (
        "calls",
        "chunks",
        "floors",
        "hws",
        "meta",
        "retention",
        "retries",
        "settled",
        "stop",
        "subs",
        "topics",
        "unsubs",
        "waiters",
    )

    def __init__(self) -> None:
        self.topics: list[tuple[int, str]] = []
        self.subs: list[tuple[int, str, int, int]] = []  # (id, name, topic id, floor): new or reset
        self.unsubs: list[int] = []
        self.chunks: list[Chunk] = []  # published messages, in sequence order
        self.floors: dict[int, int] = {}
        self.settled: list[tuple[int, int]] = []  # (sub id, seq) settled at or above the floor
        self.hws: dict[int, int] = {}
        self.retries: dict[tuple[int, int], int] = {}  # (sub id, seq) -> attempts
        self.meta: dict[str, int | None] = {}  # None deletes the key
        self.retention = False
        self.stop = False
        self.waiters: list[asyncio.Future[None]] = []
        # reads run in the writer thread once this batch is committed (`Writer.call`)
        self.calls: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = []

    def has_changes(self) -> bool:
        return bool(self.chunks or self.floors or self.settled or self.hws or self.retries or self.topics) or bool(
            self.subs or self.unsubs or self.meta or self.retention or self.calls
        )


def transaction_script(p: Pending) -> str:
    """`BEGIN` and every change of `p` except the segment rows (the caller inserts and commits)."""
    out: list[str] = ["BEGIN;"]
    if p.topics:
        _values(out, "INSERT OR REPLACE INTO topics (id, name)", (f"({tid},{_text(n)})" for tid, n in p.topics))
    for sid, name, tid, floor in p.subs:
        out.append(
            f"INSERT OR REPLACE INTO subs (id, name, topic_id, floor, hw) VALUES ({sid},{_text(name)},{tid},{floor},0);"
            f"DELETE FROM settled WHERE sub_id={sid};DELETE FROM retries WHERE sub_id={sid};"
        )
    for sid in p.unsubs:
        out.append(f"DELETE FROM settled WHERE sub_id={sid};DELETE FROM retries WHERE sub_id={sid};")
        out.append(f"DELETE FROM subs WHERE id={sid};")
    if p.chunks:
        last = p.chunks[-1]
        out.append(f"INSERT OR REPLACE INTO meta VALUES ('next_seq',{last.first_seq + len(last.blobs)});")
    if p.retries:
        _values(
            out,
            "INSERT OR REPLACE INTO retries (sub_id, seq, n)",
            (f"({s},{q},{n})" for (s, q), n in p.retries.items()),
        )
    if p.settled:
        _values(out, "INSERT OR IGNORE INTO settled (sub_id, seq)", (f"({s},{q})" for s, q in p.settled))
    for sid, floor in p.floors.items():
        out.append(
            f"UPDATE subs SET floor={floor} WHERE id={sid};DELETE FROM settled WHERE sub_id={sid} AND seq<{floor};"
            f"DELETE FROM retries WHERE sub_id={sid} AND seq<{floor};"
        )
    if p.settled:
        pairs = [f"({s},{q})" for s, q in p.settled]
        for k in range(0, len(pairs), _CHUNK):
            out.append(f"DELETE FROM retries WHERE (sub_id, seq) IN (VALUES {','.join(pairs[k : k + _CHUNK])});")
    for sid, hw in p.hws.items():
        out.append(f"UPDATE subs SET hw={hw} WHERE id={sid};")
    for key, value in p.meta.items():
        if value is None:
            out.append(f"DELETE FROM meta WHERE key={_text(key)};")
        else:
            out.append(f"INSERT OR REPLACE INTO meta VALUES ({_text(key)},{int(value)});")
    return "".join(out)


def _values(out: list[str], head: str, rows: Iterable[str]) -> None:
    chunk: list[str] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == _CHUNK:
            out.append(f"{head} VALUES {','.join(chunk)};")
            chunk = []
    if chunk:
        out.append(f"{head} VALUES {','.join(chunk)};")


def _text(value: str) -> str:
    return f"CAST(X'{value.encode().hex()}' AS TEXT)"
