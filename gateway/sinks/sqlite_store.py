"""The embedded default store: readings in one SQLite table (WAL mode), and queries on it.

One row per reading (a point):

    points(measurement, tags, time_ns, device_id, fields)
    PRIMARY KEY (measurement, tags, time_ns)  -- WITHOUT ROWID

`tags` is canonical JSON (keys sorted), so the key is the reading's identity; `fields` is a
JSON object. Writing a point whose identity is already stored merges its fields into the
stored ones (a field written again takes the new value, others stay), as InfluxDB does: a
retried or replayed batch rewrites the same rows instead of duplicating them. Indexes:
(device_id, time_ns) and (time_ns). The view `readings` shows one row per field, as
(measurement, tags, field, time_ns, device_id, kind, value), `kind` being `f`/`i`/`b`/`s`
(float, integer, bool as 0/1, text), so values read back with their type.

A file written by earlier releases (a `readings` table with one row per field) is converted
to this layout when it is opened, in one transaction.

Guarantees of `SQLiteStoreSink.write`: one transaction per batch, committed before it
returns `accepted` (with `synchronous: full`, durable against power loss; `normal` survives
a crash of the process but not of the machine). A reading that cannot be stored (not a
`Reading`, no fields, NaN/infinite float, integer outside int64, non-text tag, text
that is not valid UTF-8) is rejected
on its own; the rest of the batch is written. Any `sqlite3.Error` or `OSError` (locked,
disk full, unopenable path) rolls the transaction back and reports `retry` for the storable
readings: nothing of the batch is half-written. All SQLite work runs in a worker thread,
one call at a time per sink (a lock held by the thread, so cancelling an awaiting task
cannot let two calls overlap).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field

from gateway.core.duration import Duration
from gateway.core.sink import WriteResult
from gateway.sinks.blocking import BlockingSink
from gateway.sinks.config import SinkConfigBase, resolve_data_path
from gateway.sinks.sqlite_rows import encode_rows

log = logging.getLogger("gateway.sinks.sqlite_store")

_SCHEMA = (  # one statement each: executescript would commit the conversion's transaction
    """CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, tags, time_ns)
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS points_by_device_time ON points (device_id, time_ns)",
    "CREATE INDEX IF NOT EXISTS points_by_time ON points (time_ns)",
)
_VIEW = """
CREATE VIEW IF NOT EXISTS readings AS
SELECT p.measurement AS measurement, p.tags AS tags, f.key AS field, p.time_ns AS time_ns,
       p.device_id AS device_id,
       CASE f.type WHEN 'real' THEN 'f' WHEN 'integer' THEN 'i' WHEN 'text' THEN 's' ELSE 'b' END AS kind,
       f.value AS value
FROM points AS p, json_each(p.fields) AS f;
"""
# A store written by earlier releases: one row per field, converted to points at open.
_CONVERT_FIELD_ROWS = """
INSERT INTO points (measurement, tags, time_ns, device_id, fields)
SELECT measurement, tags, time_ns, max(device_id), json_group_object(field,
       CASE kind WHEN 'b' THEN json(CASE WHEN value THEN 'true' ELSE 'false' END)
                 WHEN 'f' THEN CAST(value AS REAL) ELSE value END)
FROM readings GROUP BY measurement, tags, time_ns
"""
# The whole batch is one statement over one JSON parameter, run in autocommit mode as its own
# transaction (a writing statement takes the write lock when it starts, waiting up to
# busy_timeout, and commits, or rolls back whole, when it ends): the sqlite3 module releases
# and retakes the GIL around every statement step, and each retake may wait out the 5 ms
# switch interval while the event loop is busy. So `executemany` (one step per row) crawls,
# and even BEGIN / INSERT / COMMIT as three statements took 1.6x as long as one statement
# (36,000 readings in batches of 1,000 beside a busy thread: 1.23 s against 0.78 s).
# "WHERE true" lets SQLite parse the upsert clause after a SELECT.
# `value ->> i` (SQLite 3.38+) reads the row's array once per column like json_extract, but
# costs about 5 µs less per row here; older libraries get json_extract.
_COLUMN = "value ->> {}" if sqlite3.sqlite_version_info >= (3, 38) else "json_extract(value, '$[{}]')"
_INSERT = (
    "INSERT INTO points SELECT "
    + ", ".join(_COLUMN.format(i) for i in range(5))
    + " FROM json_each(?) WHERE true ON CONFLICT (measurement, tags, time_ns) DO UPDATE SET"
    " fields = json_patch(fields, excluded.fields), device_id = excluded.device_id"
)


class SQLiteStoreConfig(SinkConfigBase):
    """An SQLite file of readings; `path` defaults to `<data_dir>/readings.db`, and a
    relative path is relative to the data directory."""

    type: Literal["sqlite"] = "sqlite"
    path: str | None = Field(None, description="Database file; relative paths are relative to the data directory.")
    busy_timeout: Duration = Field(
        timedelta(seconds=1), description="How long a write waits for another connection's lock before reporting retry."
    )
    synchronous: Literal["normal", "full"] = Field(
        "full", description="full: a committed batch survives power loss; normal: faster, survives process crashes."
    )


class SQLiteStoreSink(BlockingSink):
    """Writes `Reading`s to the SQLite store. See the module docstring for guarantees."""

    def __init__(self, config: SQLiteStoreConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self.path = resolve_data_path(config.path, data_dir, "readings.db")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # held by the worker thread, so a cancelled await cannot release it early
        self._healthy = True

    async def start(self) -> None:
        """Open (creating the file, its directory and the schema if needed). Does not raise
        when the file cannot be opened: the sink is unhealthy and each write retries opening."""
        try:
            await asyncio.to_thread(self._open_sync)
        except (sqlite3.Error, OSError):
            self._healthy = False

    def _open_sync(self) -> None:
        with self._lock:
            self._ensure_open()

    def _close_sync(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _ensure_open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.config.busy_timeout.total_seconds(),
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.config.synchronous.upper()}")
            _create_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _write_sync(self, items: list[Any]) -> WriteResult:
        body, good, rejected = encode_rows(items)
        if not good:
            return WriteResult(rejected=rejected, reason="no storable readings")
        try:
            with self._lock:
                self._ensure_open().execute(_INSERT, (body,))  # autocommit: the statement is the transaction
        except (sqlite3.Error, OSError) as exc:
            self._healthy = False
            return WriteResult(retry=good, rejected=rejected, reason=f"sqlite {self.path}: {exc}")
        self._healthy = True
        return WriteResult(accepted=good, rejected=rejected)


def _create_schema(conn: sqlite3.Connection) -> None:
    """Create what is missing; convert a store of one row per field (earlier releases)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("SELECT type FROM sqlite_master WHERE name = 'readings'").fetchone()
        for statement in _SCHEMA:
            conn.execute(statement)
        if found is not None and found[0] == "table":
            converted = conn.execute(_CONVERT_FIELD_ROWS).rowcount
            conn.execute("DROP TABLE readings")
            log.info("converted the SQLite store to one row per reading: %d points", converted)
        conn.execute(_VIEW)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def query_readings(
    db_path: Path,
    device_id: str | None,
    field: str | None,
    start_ns: int | None,
    end_ns: int | None,
    limit: int = 1000,
    measurement: str | None = None,
) -> list[dict[str, Any]]:
    """The newest `limit` rows matching every given filter, oldest first (newest last).

    The time range is half-open: `start_ns <= time_ns < end_ns`. Each row is a dict with
    `measurement`, `device_id`, `tags` (dict), `field`, `time_ns` and `value` (bool, int,
    float or str, as written). Opens the database read-only; raises `FileNotFoundError` if
    it does not exist and `ValueError` if `limit` < 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if not db_path.exists():
        raise FileNotFoundError(f"no SQLite store at {db_path}")
    clauses: list[str] = []
    params: list[object] = []
    for column, op, value in (
        ("measurement", "=", measurement),
        ("device_id", "=", device_id),
        ("field", "=", field),
        ("time_ns", ">=", start_ns),
        ("time_ns", "<", end_ns),
    ):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f"SELECT measurement, device_id, tags, field, time_ns, kind, value FROM readings {where} "
        "ORDER BY time_ns DESC, measurement DESC, tags DESC, field DESC LIMIT ?"
    )
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = conn.execute(sql, [*params, limit]).fetchall()
    finally:
        conn.close()
    return [
        {
            "measurement": m,
            "device_id": dev,
            "tags": orjson.loads(tags),
            "field": f,
            "time_ns": t,
            "value": bool(v) if kind == "b" else v,
        }
        for m, dev, tags, f, t, kind, v in reversed(found)
    ]
