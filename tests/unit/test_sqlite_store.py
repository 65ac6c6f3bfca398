"""The SQLite store: typed round trip, idempotent rewrites, per-reading rejection, transient
errors as retry, and the query function the CLI uses."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.core.message import FieldValue, Reading
from gateway.sinks.sqlite_store import SQLiteStoreConfig, SQLiteStoreSink, query_readings

NOW = time.time_ns()


def reading(device: str = "d1", t: int = NOW, measurement: str = "env", **fields: FieldValue) -> Reading:
    return Reading(measurement, device, {"device_id": device, "site": "s1"}, fields or {"v": 1.5}, t)


def config(**kwargs: Any) -> SQLiteStoreConfig:
    return SQLiteStoreConfig(name="store", subscription="tsdb", **kwargs)


async def open_sink(tmp_path: Path, **kwargs: Any) -> SQLiteStoreSink:
    sink = SQLiteStoreSink(config(**kwargs), tmp_path)
    await sink.start()
    return sink


def test_config_is_strict_and_has_defaults() -> None:
    cfg = config()
    assert (cfg.type, cfg.path, cfg.synchronous, cfg.busy_timeout) == ("sqlite", None, "full", timedelta(seconds=1))
    assert config(busy_timeout="250ms").busy_timeout == timedelta(milliseconds=250)
    with pytest.raises(ValidationError):
        config(unknown=1)


def test_paths_resolve_against_the_data_dir_without_io(tmp_path: Path) -> None:
    assert SQLiteStoreSink(config(), tmp_path / "data").path == tmp_path / "data" / "readings.db"
    assert SQLiteStoreSink(config(path="db/x.db"), tmp_path).path == tmp_path / "db" / "x.db"
    assert SQLiteStoreSink(config(path="/abs/x.db"), tmp_path).path == Path("/abs/x.db")
    assert not (tmp_path / "data").exists()


async def test_values_read_back_with_their_types(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    result = await sink.write([reading(f=21.5, i=-3, b=True, s="on", whole=2.0)])
    await sink.close()
    assert result.accepted == [0]
    rows = query_readings(sink.path, "d1", None, None, None)
    values = {r["field"]: r["value"] for r in rows}
    assert values == {"f": 21.5, "i": -3, "b": True, "s": "on", "whole": 2.0}
    assert [type(values[k]) for k in ("f", "i", "b", "s", "whole")] == [float, int, bool, str, float]
    assert rows[0]["tags"] == {"device_id": "d1", "site": "s1"}
    assert rows[0]["measurement"] == "env" and rows[0]["time_ns"] == NOW


async def test_file_is_in_wal_mode(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    await sink.close()
    with sqlite3.connect(sink.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_rewriting_a_batch_replaces_rows(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    batch = [reading(t=NOW + i, v=float(i)) for i in range(5)]
    assert (await sink.write(batch)).accepted == list(range(5))
    assert (await sink.write(batch)).accepted == list(range(5))
    # same identity with the tags in another order: still the same point
    reordered = Reading("env", "d1", {"site": "s1", "device_id": "d1"}, {"v": 9.0}, NOW)
    assert (await sink.write([reordered])).accepted == [0]
    await sink.close()
    rows = query_readings(sink.path, None, None, None, None)
    assert [r["value"] for r in rows] == [9.0, 1.0, 2.0, 3.0, 4.0]


async def test_a_point_written_again_merges_its_fields(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    first = reading(a=1.0, b=2, c="x")
    later = reading(b=3, d=True)  # same identity: b is overwritten, a and c stay, d is added
    assert (await sink.write([first])).accepted == [0]
    assert (await sink.write([later, later])).accepted == [0, 1]
    await sink.close()
    rows = query_readings(sink.path, None, None, None, None)
    assert {r["field"]: r["value"] for r in rows} == {"a": 1.0, "b": 3, "c": "x", "d": True}
    with sqlite3.connect(sink.path) as conn:
        assert conn.execute("SELECT count(*) FROM points").fetchone() == (1,)


async def test_a_store_of_one_row_per_field_is_converted_at_open(tmp_path: Path) -> None:
    old = tmp_path / "readings.db"
    with sqlite3.connect(old) as conn:  # the layout of earlier releases
        conn.executescript(
            """
            CREATE TABLE readings (measurement TEXT NOT NULL, tags TEXT NOT NULL, field TEXT NOT NULL,
                time_ns INTEGER NOT NULL, device_id TEXT NOT NULL, kind TEXT NOT NULL, value NOT NULL,
                PRIMARY KEY (measurement, tags, field, time_ns)) WITHOUT ROWID;
            CREATE INDEX readings_by_time ON readings (time_ns);
            """
        )
        tags = '{"device_id":"d1","site":"s1"}'
        conn.executemany(
            "INSERT INTO readings VALUES ('env', ?, ?, ?, 'd1', ?, ?)",
            [
                (tags, "f", NOW, "f", 2.0),
                (tags, "i", NOW, "i", 7),
                (tags, "b", NOW, "b", 0),
                (tags, "s", NOW, "s", "on"),
                (tags, "f", NOW + 1, "f", 1.5),
            ],
        )
    sink = await open_sink(tmp_path)
    assert (await sink.write([reading(t=NOW + 1, g=9)])).accepted == [0]
    await sink.close()
    rows = query_readings(old, "d1", None, None, None)
    assert [(r["time_ns"] - NOW, r["field"], r["value"]) for r in rows] == [
        (0, "b", False),
        (0, "f", 2.0),
        (0, "i", 7),
        (0, "s", "on"),
        (1, "f", 1.5),
        (1, "g", 9),
    ]
    assert [type(r["value"]) for r in rows] == [bool, float, int, str, float, int]
    with sqlite3.connect(old) as conn:
        kinds = dict(conn.execute("SELECT type, count(*) FROM sqlite_master WHERE name = 'readings'").fetchall())
        assert kinds == {"view": 1}


async def test_unstorable_readings_are_rejected_alone(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    batch: list[object] = [
        reading(t=NOW),
        reading(v=float("nan")),
        "not a reading",
        reading(v=2**64),
        Reading("env", "d1", {"device_id": "d1"}, {}, NOW),
        Reading("env", "d1", {"device_id": 7}, {"v": 1}, NOW),  # type: ignore[dict-item]
        reading(s="lone \udc80 surrogate"),
        reading(device="bad\ud800"),
        reading(t=NOW + 1),
    ]
    result = await sink.write(batch)
    await sink.close()
    assert result.accepted == [0, 8]
    assert sorted(result.rejected) == [1, 2, 3, 4, 5, 6, 7]
    assert "NaN" in result.rejected[1] and "str" in result.rejected[2] and "64-bit" in result.rejected[3]
    assert "no fields" in result.rejected[4] and "not text" in result.rejected[5]
    assert "UTF-8" in result.rejected[6] and "UTF-8" in result.rejected[7]
    assert len(query_readings(sink.path, None, None, None, None)) == 2


async def test_empty_batch_touches_nothing(tmp_path: Path) -> None:
    sink = SQLiteStoreSink(config(), tmp_path / "never")
    result = await sink.write([])
    assert (result.accepted, result.retry, result.rejected) == ([], [], {})
    assert not (tmp_path / "never").exists()


async def test_locked_database_means_retry_then_recovers(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path, busy_timeout=timedelta(milliseconds=50))
    other = sqlite3.connect(sink.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    result = await sink.write([reading(), reading(v="x", t=NOW + 1), reading(v=float("inf"))])
    assert result.retry == [0, 1] and list(result.rejected) == [2]
    assert "locked" in result.reason
    assert not sink.healthy()
    other.execute("ROLLBACK")
    other.close()
    result = await sink.write([reading()])
    assert result.accepted == [0] and sink.healthy()
    await sink.close()


async def test_a_write_waits_for_another_writer_within_the_busy_timeout(tmp_path: Path) -> None:
    """The batch's one statement takes the write lock as it starts, through the busy handler:
    a lock released within `busy_timeout` delays the write instead of failing it."""
    sink = await open_sink(tmp_path, busy_timeout=timedelta(seconds=5))
    other = sqlite3.connect(sink.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO points VALUES ('env', '{}', 1, 'x', '{\"v\": 1}')")
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, other.execute, "COMMIT")
    started = time.monotonic()
    result = await sink.write([reading(), reading(t=NOW + 1)])
    assert result.accepted == [0, 1] and time.monotonic() - started >= 0.25
    other.close()
    await sink.close()
    assert len(query_readings(sink.path, "d1", None, None, None)) == 2


async def test_a_batch_failing_part_way_leaves_nothing_written(tmp_path: Path) -> None:
    """One statement is one transaction: a failure on a later row undoes the earlier rows."""
    sink = await open_sink(tmp_path)
    other = sqlite3.connect(sink.path, isolation_level=None)
    other.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON points WHEN NEW.device_id = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    other.close()
    result = await sink.write([reading(), reading(t=NOW + 1), reading(device="boom"), reading(t=NOW + 2)])
    assert result.retry == [0, 1, 2, 3] and "boom" in result.reason
    assert query_readings(sink.path, None, None, None, None) == []
    result = await sink.write([reading(), reading(t=NOW + 1)])
    assert result.accepted == [0, 1]
    await sink.close()
    assert len(query_readings(sink.path, None, None, None, None)) == 2


async def test_unopenable_path_means_retry_not_an_exception(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sink = await open_sink(tmp_path, path=str(blocker / "sub" / "readings.db"))
    assert not sink.healthy()
    result = await sink.write([reading(), reading(t=NOW + 1)])
    assert result.retry == [0, 1] and result.accepted == []
    await sink.close()


async def test_query_filters_and_keeps_the_newest(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    batch = [reading(device=f"d{i % 2}", t=NOW + i, a=i, b=-i) for i in range(10)]
    batch.append(reading(device="d0", t=NOW + 100, measurement="power", a=100))
    assert len((await sink.write(batch)).accepted) == 11
    await sink.close()
    q = sink.path
    assert [r["time_ns"] - NOW for r in query_readings(q, "d0", "a", None, None)] == [0, 2, 4, 6, 8, 100]
    assert [r["value"] for r in query_readings(q, "d1", "b", NOW + 3, NOW + 7)] == [-3, -5]
    assert [r["value"] for r in query_readings(q, None, "a", None, None, limit=3)] == [8, 9, 100]
    assert [r["value"] for r in query_readings(q, None, "a", None, None, measurement="power")] == [100]
    newest = query_readings(q, "d1", None, None, None, limit=2)
    assert [(r["time_ns"] - NOW, r["field"]) for r in newest] == [(9, "a"), (9, "b")]
    assert query_readings(q, "nobody", None, None, None) == []
    with pytest.raises(ValueError):
        query_readings(q, None, None, None, None, limit=0)
    with pytest.raises(FileNotFoundError):
        query_readings(tmp_path / "missing.db", None, None, None, None)


async def test_query_works_while_the_sink_is_open(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    await sink.write([reading()])
    assert len(query_readings(sink.path, "d1", None, None, None)) == 1
    await sink.write([reading(t=NOW + 1)])
    assert len(query_readings(sink.path, "d1", None, None, None)) == 2
    await sink.close()
