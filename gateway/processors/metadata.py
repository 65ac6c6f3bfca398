"""The device metadata store: the latest metadata object of each device, in SQLite.

Written by metadata messages (`devices/{device_id}/meta`) and by the admin endpoint
(`PUT /devices/{id}/meta`). `put` returns only after the row is committed (WAL, synchronous
FULL), which is what lets an invalidation be sent strictly after the change is stored. It
reports whether the metadata changed, so re-delivered retained messages do not invalidate.
All work runs in a worker thread under one lock; the connection opens on first use.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_meta (
    device_id TEXT PRIMARY KEY,
    meta TEXT NOT NULL,
    updated_ns INTEGER NOT NULL
);
"""


class MetadataError(ValueError):
    """The metadata is not a JSON object."""


def parse_meta(payload: bytes) -> dict[str, Any]:
    try:
        meta = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MetadataError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise MetadataError(f"metadata must be a JSON object, not {type(meta).__name__}")
    return meta


class MetadataStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def put(self, device_id: str, meta: dict[str, Any]) -> bool:
        """Store `meta` for `device_id`; True if it differs from what was stored (committed before return)."""
        return await asyncio.to_thread(self._put_sync, device_id, orjson.dumps(meta, option=orjson.OPT_SORT_KEYS))

    async def get(self, device_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get_sync, device_id)

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def _put_sync(self, device_id: str, encoded: bytes) -> bool:
        text = encoded.decode()
        with self._lock:
            conn = self._open()
            row = conn.execute("SELECT meta FROM device_meta WHERE device_id = ?", (device_id,)).fetchone()
            if row is not None and row[0] == text:
                return False
            conn.execute(
                "INSERT INTO device_meta (device_id, meta, updated_ns) VALUES (?, ?, ?) "
                "ON CONFLICT(device_id) DO UPDATE SET meta = excluded.meta, updated_ns = excluded.updated_ns",
                (device_id, text, time.time_ns()),
            )
            return True

    def _get_sync(self, device_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._open().execute("SELECT meta FROM device_meta WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    def _close_sync(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
