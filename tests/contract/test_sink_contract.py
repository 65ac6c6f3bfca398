"""The contract every sink passes (see gateway/core/sink.py), run against each real store.

Cases: the SQLite store, the dead-letter file, and the InfluxDB sink writing into the real
VictoriaMetrics fixture. Capability flags on a case say what legitimately differs:

* `rewrite`: "overwrites" (writing a batch again stores each point once) or "appends" (the
  dead-letter file: a batch written again is there twice; readers tolerate duplicates).
* `odd_outcome`: what becomes of an item the sink cannot store as it is: "rejected" (a
  reading with a NaN field) or "accepted" (a foreign item the dead-letter file wraps).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway.core.message import DeadLetter, Reading
from gateway.core.sink import Sink, WriteResult
from gateway.sinks.deadletter_file import DeadLetterFileConfig, DeadLetterFileSink, read_dead_letters
from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
from gateway.sinks.sqlite_store import SQLiteStoreConfig, SQLiteStoreSink, query_readings
from tests.servers import VictoriaMetrics, free_port

Identity = tuple[Any, ...]


@dataclass
class Harness:
    """One sink under test, and how to see what its destination holds."""

    make_sink: Callable[[], Sink]
    make_unreachable: Callable[[], Sink]
    stored: Callable[[str, int], list[Identity]]  # (tag, expected count) -> identities stored for tag
    expected: Callable[[list[Any]], list[Identity]]  # items -> identities they should be stored as


@dataclass(frozen=True)
class Case:
    kind: str
    rewrite: Literal["overwrites", "appends"]
    odd_outcome: Literal["rejected", "accepted"]
    items: Callable[[str, int], list[Any]]
    odd_item: Callable[[str], Any]
    harness: Callable[[Path, pytest.FixtureRequest], Harness]


def _readings(tag: str, n: int) -> list[Reading]:
    now = time.time_ns()  # current: VictoriaMetrics silently drops old points
    return [
        Reading(tag, f"dev-{i}", {"device_id": f"dev-{i}", "case": tag}, {"value": i + 0.5}, now - i * 1_000_000)
        for i in range(n)
    ]


def _nan_reading(tag: str) -> Reading:
    return Reading(tag, "dev-nan", {"device_id": "dev-nan"}, {"value": math.nan}, time.time_ns())


def _letters(tag: str, n: int) -> list[DeadLetter]:
    now = time.time_ns()
    return [DeadLetter(f"{tag}/dev-{i}", b'{"t": "hot"}', "contract test", "test", now - i) for i in range(n)]


def _blocked_path(tmp_path: Path, name: str) -> str:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    return str(blocker / "sub" / name)


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
    data_dir = tmp_path / "data"

    def stored(tag: str, expected: int) -> list[Identity]:
        rows = query_readings(data_dir / "readings.db", None, None, None, None, limit=100_000, measurement=tag)
        return [(r["device_id"], r["time_ns"], r["value"]) for r in rows]

    return Harness(
        make_sink=lambda: SQLiteStoreSink(SQLiteStoreConfig(name="store", subscription="tsdb"), data_dir),
        make_unreachable=lambda: SQLiteStoreSink(
            SQLiteStoreConfig(name="store", subscription="tsdb", path=_blocked_path(tmp_path, "r.db")), data_dir
        ),
        stored=stored,
        expected=lambda items: [(r.device_id, r.time_ns, r.fields["value"]) for r in items],
    )


def _deadletter_file(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
    data_dir = tmp_path / "data"

    def stored(tag: str, expected: int) -> list[Identity]:
        records = read_dead_letters(data_dir / "deadletter.jsonl")
        return [(r["topic"], r["received_ns"]) for r in records if r["topic"].startswith(tag)]

    return Harness(
        make_sink=lambda: DeadLetterFileSink(DeadLetterFileConfig(name="dlq", subscription="dlq"), data_dir),
        make_unreachable=lambda: DeadLetterFileSink(
            DeadLetterFileConfig(name="dlq", subscription="dlq", path=_blocked_path(tmp_path, "dl.jsonl")), data_dir
        ),
        stored=stored,
        expected=lambda items: [(x.topic, x.received_ns) for x in items],
    )


def _influxdb(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
    victoria: VictoriaMetrics = request.getfixturevalue("victoria")

    def stored(tag: str, expected: int) -> list[Identity]:
        """Points as InfluxDB identifies them: series + timestamp. VictoriaMetrics (without
        -dedup.minScrapeInterval) keeps raw duplicates where InfluxDB overwrites, so the same
        identity is counted once; a rewrite with a different value would still show."""
        victoria.wait_for_count(f"{tag}_value", expected)
        return sorted(
            {
                (series["metric"]["device_id"], ts, value)  # type: ignore[index]
                for series in victoria.export(f"{tag}_value")
                for value, ts in zip(series["values"], series["timestamps"], strict=True)  # type: ignore[call-overload]
            }
        )

    def config(url: str) -> InfluxDBSinkConfig:
        return InfluxDBSinkConfig(name="tsdb", subscription="tsdb", url=url, timeout=timedelta(seconds=2))

    return Harness(
        make_sink=lambda: InfluxDBSink(config(victoria.url), tmp_path),
        make_unreachable=lambda: InfluxDBSink(config(f"http://127.0.0.1:{free_port()}"), tmp_path),
        stored=stored,
        expected=lambda items: [(r.device_id, r.time_ns // 1_000_000, r.fields["value"]) for r in items],
    )


CASES = [
    pytest.param(Case("sqlite", "overwrites", "rejected", _readings, _nan_reading, _sqlite), id="sqlite"),
    pytest.param(
        Case("deadletter_file", "appends", "accepted", _letters, _nan_reading, _deadletter_file), id="deadletter_file"
    ),
    pytest.param(
        Case("influxdb", "overwrites", "rejected", _readings, _nan_reading, _influxdb),
        id="influxdb",
        marks=pytest.mark.integration,
    ),
]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    return c


@pytest.fixture
def harness(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
    return case.harness(tmp_path, request)


@pytest.fixture
def tag() -> str:
    return f"contract_{uuid.uuid4().hex[:10]}"


def assert_every_index_once(result: WriteResult, n: int) -> None:
    seen = [*result.accepted, *result.retry, *result.split, *result.rejected]
    assert sorted(seen) == list(range(n)), f"indices {seen} do not cover 0..{n - 1} exactly once"


def open_fds() -> set[tuple[str, str]]:
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            found.add((fd.name, str(fd.readlink())))
        except OSError:
            continue  # the fd of the listing itself
    return found


async def test_every_index_is_accounted_for_exactly_once(case: Case, harness: Harness, tag: str) -> None:
    items = case.items(tag, 4)
    batch = [items[0], items[1], case.odd_item(tag), items[2], items[3]]
    sink = harness.make_sink()
    await sink.start()
    result = await sink.write(batch)
    await sink.close()
    assert_every_index_once(result, len(batch))
    if case.odd_outcome == "rejected":
        assert result.accepted == [0, 1, 3, 4] and list(result.rejected) == [2] and result.rejected[2]
    else:
        assert result.accepted == [0, 1, 2, 3, 4] and not result.rejected


async def test_a_written_batch_reads_back(case: Case, harness: Harness, tag: str) -> None:
    items = case.items(tag, 5)
    sink = harness.make_sink()
    await sink.start()
    result = await sink.write(items)
    await sink.close()
    assert result.accepted == [0, 1, 2, 3, 4]
    assert sink.healthy()
    assert sorted(harness.stored(tag, 5)) == sorted(harness.expected(items))


async def test_writing_a_batch_twice(case: Case, harness: Harness, tag: str) -> None:
    items = case.items(tag, 5)
    sink = harness.make_sink()
    await sink.start()
    for _ in range(2):
        result = await sink.write(items)
        assert result.accepted == [0, 1, 2, 3, 4]
    await sink.close()
    once = harness.expected(items)
    if case.rewrite == "overwrites":
        assert sorted(harness.stored(tag, 5)) == sorted(once)
    else:
        assert sorted(harness.stored(tag, 10)) == sorted(once + once)


async def test_an_empty_batch_is_fine(case: Case, harness: Harness) -> None:
    sink = harness.make_sink()
    await sink.start()
    result = await sink.write([])
    await sink.close()
    assert result == WriteResult()
    assert sink.healthy()


async def test_close_releases_every_file_and_socket(case: Case, harness: Harness, tag: str) -> None:
    before = open_fds()
    sink = harness.make_sink()
    await sink.start()
    assert (await sink.write(case.items(tag, 3))).accepted == [0, 1, 2]
    assert open_fds() - before, "a started sink that wrote should hold its destination open"
    await sink.close()
    assert open_fds() - before == set()


async def test_unreachable_destination_means_retry_for_all(case: Case, harness: Harness, tag: str) -> None:
    items = case.items(tag, 3)
    sink = harness.make_unreachable()
    await sink.start()  # must not raise: the runner's write retries handle the outage
    assert not sink.healthy()
    result = await sink.write(items)
    await sink.close()
    assert result.retry == [0, 1, 2] and result.reason
    assert_every_index_once(result, 3)
    assert not sink.healthy()
