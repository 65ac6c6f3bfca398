"""Copy what can still be read from a damaged bus database into a fresh one.

Private to the SQLite bus (`_sqlite_recovery`). Best effort, table by table:

* `topics`, `subs` (positions), `settled`, `retries`, `meta`: all or nothing per table.
* `segments` (the messages): read in sequence order; where a read fails, the rows are read
  one by one and the unreadable stretch is skipped by probing further sequence numbers, so
  that rows after a damaged page are still found. Segments are copied as stored (decoding,
  and reporting messages that do not decode, happens when the database is loaded).

Consequences, returned as plain sentences for the recovery report:

* Unreadable messages are lost.
* Without `topics`, no message can be attributed to a topic: all are lost.
* Without `subs`, the subscriptions' positions are lost: every recovered message will be
  delivered again to every subscription of its topic (duplicates of acked ones, not loss).
* Without `settled`, messages acked out of order are delivered again; without `retries`,
  attempt counts restart (a first delivery stays counted).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

_COLUMNS = {
    "meta": "key, value",
    "topics": "id, name",
    "subs": "id, name, topic_id, floor, hw",
    "settled": "sub_id, seq",
    "retries": "sub_id, seq, n",
}
_MESSAGE_COLUMNS = "first_seq, last_seq, topic_id, publish_ns, count, data"
_CHUNK = 2000


def salvage(source: Path, dest: sqlite3.Connection) -> tuple[int, list[str]]:
    """Copy readable rows of `source` into `dest` (which has the schema); return (messages copied, losses)."""
    lost: list[str] = []
    try:
        src = sqlite3.connect(source, isolation_level=None)
        # read past a header that promises more pages than the file has (truncation), as .recover does
        src.execute("PRAGMA writable_schema=ON")
    except sqlite3.Error as exc:
        return 0, [f"the damaged file cannot be opened ({exc}): every message and position is lost"]
    try:
        return _copy(src, dest, lost), lost
    finally:
        src.close()


def _copy(src: sqlite3.Connection, dest: sqlite3.Connection, lost: list[str]) -> int:
    readable: dict[str, list[tuple[Any, ...]]] = {}
    for table, cols in _COLUMNS.items():
        try:
            readable[table] = src.execute(f"SELECT {cols} FROM {table}").fetchall()
        except sqlite3.DatabaseError as exc:
            lost.append(f"table {table} is unreadable ({exc})")
    rows, gaps = _read_messages(src)
    if gaps:
        lost.append(f"messages with sequence numbers in {', '.join(gaps)} are unreadable: lost")
    dest.execute("BEGIN")
    for table, cols in _COLUMNS.items():
        data = readable.get(table)
        if data and table != "meta":
            marks = ", ".join("?" * len(cols.split(",")))
            dest.executemany(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", data)
    for key, value in readable.get("meta", []):
        if key == "next_seq":
            dest.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (value,))
    if "topics" not in readable:
        if rows:
            lost.append(f"{_count(rows)} readable message(s) cannot be attributed to a topic: lost")
        rows = []
    elif "subs" not in readable and rows:
        dest.execute("INSERT OR REPLACE INTO meta VALUES ('positions_lost', 1)")
        lost.append(
            "subscription positions are lost: every recovered message will be delivered again "
            "to each subscription of its topic (duplicates of messages already acked)"
        )
    if "settled" not in readable and "subs" in readable:
        lost.append("out-of-order acks are lost: those messages will be delivered again")
    if "retries" not in readable and "subs" in readable:
        lost.append("redelivery attempt counts are lost: they restart at 1 for delivered messages")
    dest.executemany(f"INSERT OR IGNORE INTO segments ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)
    dest.execute("COMMIT")
    return _count(rows)


def _count(segments: list[tuple[Any, ...]]) -> int:
    return sum(int(seg[4]) for seg in segments)


def _read_messages(src: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Every readable segment row in order, and the message sequence numbers lost in between, as text."""
    query = f"SELECT {_MESSAGE_COLUMNS} FROM segments WHERE first_seq > ? ORDER BY first_seq LIMIT ?"
    out: list[tuple[Any, ...]] = []
    gaps: list[str] = []
    last = 0  # first_seq of the last segment read
    covered = 0  # last_seq of the last segment read
    lost_from: int | None = None
    while True:
        try:
            chunk = src.execute(query, (last, _CHUNK)).fetchall()
        except sqlite3.DatabaseError:
            try:
                chunk = src.execute(query, (last, 1)).fetchall()
            except sqlite3.DatabaseError:
                resume = _probe(src, last)
                if resume is None or resume <= last:
                    gaps.append(f"{covered + 1}..(end)")
                    break
                lost_from = covered + 1
                last = resume - 1
                continue
        if not chunk:
            break
        if lost_from is not None:
            gaps.append(f"{lost_from}..{int(chunk[0][0]) - 1}")
            lost_from = None
        out.extend(chunk)
        last = int(chunk[-1][0])
        covered = int(chunk[-1][1])
    return out, gaps


def _probe(src: sqlite3.Connection, last: int) -> int | None:
    """The smallest sequence number readable again after the failure past `last`, or None.

    Tries starts `last+2, last+3, last+5, last+9, ...` (doubling steps), then bisects
    between the last unreadable start and the first readable one.
    """

    def first_from(start: int) -> int | None:
        """The first row's seq from `start`; -1 if that read fails, None if there is no row."""
        try:
            row = src.execute(
                "SELECT first_seq FROM segments WHERE first_seq >= ? ORDER BY first_seq LIMIT 1", (start,)
            ).fetchone()
            if row is not None:
                src.execute(f"SELECT {_MESSAGE_COLUMNS} FROM segments WHERE first_seq = ?", (row[0],)).fetchone()
        except sqlite3.DatabaseError:
            return -1
        return None if row is None else int(row[0])

    bad = last + 1
    step = 1
    while step < 2**62:
        start = last + 1 + step
        found = first_from(start)
        if found is None:
            return None
        if found >= 0:
            while start - bad > 1:
                mid = (bad + start) // 2
                if first_from(mid) == -1:
                    bad = mid
                else:
                    start = mid
            return first_from(start)
        bad = start
        step *= 2
    return None
