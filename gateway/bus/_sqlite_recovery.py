"""Opening the SQLite bus database: schema, settings, integrity check, and salvage.

Private to the SQLite bus; runs in its writer thread. `open_database` returns a connection
to a database that passed `PRAGMA quick_check`, and a `RecoveryReport`:

* A missing file is created. A healthy file is used as it is (WAL replay is SQLite's job:
  every committed transaction is kept, an interrupted one is rolled back; a WAL ending in a
  partial frame, the mark of a torn write, is logged as a warning).
* A file SQLite calls corrupt or "not a database" (torn or foreign writes, truncation) is
  moved aside with its `-wal`/`-shm` files as `<name>.corrupt-<UTC time>`, a fresh database
  is created, and what can still be read from the damaged copy is copied into it
  (`_sqlite_salvage`). The report says what was lost.
* Anything else (no permission, disk full, the file locked by another process, an SQLite
  database that is not a bus database or has a newer schema) raises `BusOpenError`: the
  file is left untouched for the operator.

Connection settings: WAL journal, `locking_mode=EXCLUSIVE` (one process per database: a
second gateway on the same file gets `BusOpenError`; no `-shm` file is used),
`synchronous` as configured.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gateway.bus.sqlite")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS subs (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, topic_id INTEGER NOT NULL,
    floor INTEGER NOT NULL, hw INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, topic_id INTEGER NOT NULL,
    publish_ns INTEGER NOT NULL, count INTEGER NOT NULL, data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_last ON segments (last_seq);
CREATE TABLE IF NOT EXISTS settled (
    sub_id INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (sub_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retries (
    sub_id INTEGER NOT NULL, seq INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (sub_id, seq)
) WITHOUT ROWID;
"""
TABLES = frozenset({"meta", "topics", "subs", "segments", "settled", "retries"})
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class BusOpenError(Exception):
    """The bus database cannot be opened; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What `SQLiteBus.open` found. `lost` is empty unless something could not be recovered.

    `messages_recovered` counts the stored messages carried over (all of them for a healthy
    file; the rows read back from the damaged copy otherwise), less those whose data could
    not be decoded (named, as sequence number ranges, in `lost`).
    """

    path: Path
    corrupt: bool = False
    moved_to: Path | None = None
    problems: tuple[str, ...] = ()
    messages_recovered: int = 0
    lost: tuple[str, ...] = field(default=())


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), configured for the bus."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True, timeout=0.2)
    try:
        conn.execute("PRAGMA page_size=16384")  # for a new file only: segments are large rows
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA journal_size_limit=67108864")
        conn.execute("PRAGMA cache_size=-16384")
        conn.execute("PRAGMA temp_store=MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


def open_database(path: Path, synchronous: str) -> tuple[sqlite3.Connection, RecoveryReport]:
    """Open (create, or recover) the database at `path`; see the module docstring."""
    from gateway.bus._sqlite_salvage import salvage

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BusOpenError(f"cannot create the directory of the bus database {path}: {exc}") from exc
    existed = path.exists()
    torn = _torn_wal_tail(path)
    if torn:
        log.warning("bus database %s: %s", path, torn)
    problems: list[str] = []
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path, synchronous)
        problems = _check(conn, path) if existed else []
        if not problems:
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            return conn, RecoveryReport(path)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
            conn = None
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code not in _DAMAGED:
            raise BusOpenError(_environment_problem(path, exc, code)) from exc
        problems = [str(exc)]
    if conn is not None:
        conn.close()
    moved = _move_aside(path)
    log.error(
        "bus database %s is damaged (%s); moved it to %s and starting a new one, copying what can be read",
        path,
        "; ".join(problems[:5]),
        moved,
    )
    conn = connect(path, synchronous)
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    recovered, lost = salvage(moved, conn)
    report = RecoveryReport(path, True, moved, tuple(problems), recovered, tuple(lost))
    for line in lost:
        log.error("bus database recovery: %s", line)
    return conn, report


def _check(conn: sqlite3.Connection, path: Path) -> list[str]:
    """Problems `quick_check` reports; raises BusOpenError for a database that is not ours."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    if problems:
        return problems
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and not tables >= TABLES:
        raise BusOpenError(
            f"{path} is an SQLite database but not a bus database (tables: {', '.join(sorted(tables))}); "
            "point the bus `path` elsewhere"
        )
    if tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise BusOpenError(f"{path} has bus schema version {row and row[0]}; this gateway reads {SCHEMA_VERSION}")
    return []


def _torn_wal_tail(path: Path) -> str | None:
    """What a WAL ending in a partial frame means (a write torn by a crash), or None.

    SQLite only ever appends whole frames (24-byte header + one page) after a 32-byte file
    header; it silently ignores a partial last frame, and with it the transaction it was part of.
    """
    wal = Path(f"{path}-wal")
    try:
        with wal.open("rb") as f:
            header = f.read(32)
            size = wal.stat().st_size
    except OSError:
        return None
    if len(header) < 32:
        return None
    extra = (size - 32) % (24 + int.from_bytes(header[8:12], "big"))
    if not extra:
        return None
    return (
        f"its write-ahead log ends in a partial frame ({extra} bytes: a write torn by a crash or power "
        "loss); the transaction it belonged to is discarded, what was committed before it is kept"
    )


def _environment_problem(path: Path, exc: sqlite3.DatabaseError, code: int) -> str:
    if code == sqlite3.SQLITE_BUSY:
        return f"bus database {path} is in use by another process (only one gateway may use it)"
    return f"cannot open the bus database {path}: {exc}"


def _move_aside(path: Path) -> Path:
    """Rename the database and its -wal/-shm files to `<name>.corrupt-<time>`; return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            with contextlib.suppress(OSError):
                side.rename(Path(str(target) + suffix))
    return target
