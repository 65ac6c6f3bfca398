"""The SQLite bus's own promises: durability, restarts, retention, disk bound, recovery; and its codec.

Real SQLite files in tmp_path. The crash tests run a child process that publishes, pulls and
acks and is then killed with SIGKILL; the parent reopens the file and checks what survived.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import _sqlite_store
from gateway.bus.codec import CodecError, decode, encode, encode_many
from gateway.bus.sqlite import BusOpenError, BusStorageError, SQLiteBus, SQLiteBusConfig
from gateway.core.bus import BatchPolicy, BusClosed, OutgoingMessage, ReceivedMessage, SubscriptionConfig
from gateway.core.message import DeadLetter, Reading
from gateway.core.metrics import Metrics

NOW = timedelta(0)


def sub(name: str, topic: str, **kw: Any) -> SubscriptionConfig:
    batch = kw.pop("batch", BatchPolicy(max_messages=1000, max_latency=NOW))
    return SubscriptionConfig(name=name, topic=topic, batch=batch, **kw)


def msgs(*data: Any, size: int = 10, key: str | None = None) -> list[OutgoingMessage]:
    return [OutgoingMessage(d, size, key) for d in data]


async def opened(data_dir: Path, *subs: SubscriptionConfig, metrics: Metrics | None = None, **cfg: Any) -> SQLiteBus:
    """A bus on `data_dir/bus.db` with the topics of `subs` (and `dead`) and `subs` declared."""
    cfg.setdefault("synchronous", "normal")
    bus = SQLiteBus(SQLiteBusConfig(**cfg), data_dir, metrics)
    await bus.open()
    for topic in {"dead", *(s.topic for s in subs)}:
        bus.create_topic(topic)
    for s in subs:
        bus.create_subscription(s)
    return bus


async def pull(bus: SQLiteBus, name: str, within: float = 1.0) -> list[ReceivedMessage]:
    return await asyncio.wait_for(bus.pull(name), within)


async def drain(bus: SQLiteBus, name: str, wait: float = 0.2) -> list[ReceivedMessage]:
    """Pull until nothing comes within `wait`; ack everything."""
    out: list[ReceivedMessage] = []
    while True:
        try:
            batch = await asyncio.wait_for(bus.pull(name), wait)
        except TimeoutError:
            return out
        out.extend(batch)
        bus.ack(name, [m.ack_id for m in batch])


def reading(n: int, **fields: Any) -> Reading:
    return Reading("temp", f"dev{n}", {"device_id": f"dev{n}"}, fields or {"value": n + 0.5}, time_ns=n, received_ns=n)


# -- codec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        reading(1),
        Reading("m", "d", {"device_id": "d", "ü": "ß"}, {"f": 1.0, "i": -(2**63), "b": False, "s": "null"}, 5, 6),
        Reading("m", "d", {}, {"nan": math.inf, "big": 2**70, "neg": -math.inf, "ok": 1}, -1, 0),
        DeadLetter("dev/x", b"\x00\xff\n{not json\n", "bad; worse", "validation", 7, None, 3),
        DeadLetter("t", b"", "r", "s", 0, "client-1", 0),
        {"a": [1, 2.5, None, True, "x"]},
        "text",
        12,
    ],
)
def test_codec_round_trips_exactly(value: Any) -> None:
    back = decode(encode(value))
    assert back == value and type(back) is type(value)
    if isinstance(value, Reading):
        assert [type(v) for v in back.fields.values()] == [type(v) for v in value.fields.values()]
        assert decode(encode_many([value, 3])[0]) == value


def test_codec_round_trips_nan_fields() -> None:
    back = decode(encode(Reading("m", "d", {}, {"x": math.nan, "y": 2}, 1, 2)))
    assert math.isnan(back.fields["x"]) and back.fields["y"] == 2


@pytest.mark.parametrize("value", [(1, 2), {1: "x"}, {1, 2}, 2**70, math.nan, "\ud800", object()])
def test_codec_refuses_what_would_not_round_trip(value: Any) -> None:
    with pytest.raises(CodecError):
        encode(value)


@pytest.mark.parametrize("blob", [b"", b"Z{}", b"R[1,2]", b"D[1]", b"J{", b"r[]"])
def test_codec_rejects_foreign_bytes(blob: bytes) -> None:
    with pytest.raises(CodecError):
        decode(blob)


async def test_publish_of_unstorable_data_stores_nothing(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("u", "t"))
    with pytest.raises(CodecError):
        await bus.publish("t", msgs(1, (2, 3)))
    assert bus.stats("u").backlog == 0 and bus.storage_stats().stored_messages == 0
    await bus.close()


# -- persistence ------------------------------------------------------------------------


async def test_everything_resumes_after_close_and_reopen(tmp_path: Path) -> None:
    s = sub("p", "t", max_delivery_attempts=5, batch=BatchPolicy(max_messages=4, max_latency=NOW))
    bus = await opened(tmp_path, s, sub("p2", "t"))
    assert await bus.publish("t", msgs(*(reading(i) for i in range(10)), key="k")) == 2
    first = await pull(bus, "p")  # 0..3, attempt 1
    bus.ack("p", [first[1].ack_id, first[3].ack_id])  # out of order: 1 and 3
    bus.nack("p", [first[0].ack_id], delay=NOW)
    again = await pull(bus, "p")
    assert again[0].data == reading(0) and again[0].attempt == 2
    bus.ack("p2", [m.ack_id for m in await pull(bus, "p2")])
    await bus.close()

    bus = await opened(tmp_path, s, sub("p2", "t"))
    assert bus.recovery_report is not None and not bus.recovery_report.corrupt
    assert bus.recovery_report.messages_recovered == 10
    assert bus.stats("p").backlog == 8 and bus.stats("p2").backlog == 0
    got = await drain(bus, "p")
    assert [m.data for m in got] == [reading(i) for i in (0, 2, 4, 5, 6, 7, 8, 9)]
    by_value = {m.data.time_ns: m.attempt for m in got}
    assert by_value[0] == 3  # two recorded deliveries, then this one
    assert by_value[2] == 2 and by_value[4] == 2  # delivered once before (first-delivery high water)
    assert by_value[8] == 1 and by_value[9] == 1  # never delivered before
    await bus.close()

    bus = await opened(tmp_path, s, sub("p2", "t"))
    assert bus.stats("p").backlog == 0
    await bus.publish("t", msgs("new"))
    assert [m.data for m in await pull(bus, "p")] == ["new"]
    await bus.close()


async def test_dead_letters_are_stored_with_their_source_settled(tmp_path: Path) -> None:
    s = sub("src", "t", max_delivery_attempts=1, dead_letter_topic="dead")
    bus = await opened(tmp_path, s, sub("dlq", "dead"))
    await bus.publish("t", msgs(reading(3)))
    [m] = await pull(bus, "src")
    bus.nack("src", [m.ack_id])
    await bus.close()
    bus = await opened(tmp_path, s, sub("dlq", "dead"))
    assert bus.stats("src").backlog == 0
    [dead] = await pull(bus, "dlq")
    assert isinstance(dead.data, DeadLetter) and dead.data.reason == "exhausted 1 delivery attempts; last: nack"
    await bus.close()


async def test_a_subscription_not_declared_again_is_deleted_at_the_first_publish(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await opened(tmp_path, sub("keep", "t"), sub("gone", "t"))
    await bus.publish("t", msgs(1, 2))
    await bus.close()
    bus = await opened(tmp_path, sub("keep", "t"))
    with caplog.at_level(logging.WARNING, logger="gateway.bus.sqlite"):
        await bus.publish("t", msgs(3))
    assert "'gone' is not configured any more" in caplog.text
    bus.create_subscription(sub("gone", "t"))  # declared late: starts empty
    assert [m.data for m in await drain(bus, "keep")] == [1, 2, 3]
    assert bus.stats("gone").backlog == 0
    await bus.close()


CHILD = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    from datetime import timedelta
    from pathlib import Path
    from gateway.bus.sqlite import SQLiteBus, SQLiteBusConfig
    from gateway.core.bus import BatchPolicy, OutgoingMessage, SubscriptionConfig

    def say(**kw):
        print(json.dumps(kw), flush=True)

    async def main(data_dir, mode):
        bus = SQLiteBus(SQLiteBusConfig(synchronous="normal"), Path(data_dir))
        await bus.open()
        bus.create_topic("t")
        bus.create_topic("dead")
        batch = BatchPolicy(max_messages=50, max_latency=timedelta(0))
        bus.create_subscription(SubscriptionConfig(
            name="s", topic="t", max_delivery_attempts=2, dead_letter_topic="dead", batch=batch))
        bus.create_subscription(SubscriptionConfig(name="d", topic="dead", batch=batch))
        if mode == "scripted":
            for i in range(0, 300, 30):
                await bus.publish("t", [OutgoingMessage(i + j, 10) for j in range(30)])
            say(published=list(range(300)))
            got = await bus.pull("s")
            bus.ack("s", [m.ack_id for m in got[:40]])
            bus.nack("s", [got[40].ack_id], delay=timedelta(0))
            second = await bus.pull("s")  # the nacked one again, and fresh ones
            [poison] = [m for m in second if m.data == got[40].data]
            await bus.publish("t", [OutgoingMessage(1000, 10)])  # commits after the acks above
            say(published=[1000], acked=[m.data for m in got[:40]], poison=poison.data, attempt=poison.attempt,
                delivered=[m.data for m in got + second])
            asyncio.ensure_future(bus.publish("t", [OutgoingMessage(2000 + j, 10) for j in range(10)]))
            await asyncio.sleep(0)
            os.kill(os.getpid(), signal.SIGKILL)
        n = 0
        async def consume():
            while True:
                got = await bus.pull("s")
                bus.ack("s", [m.ack_id for m in got])
                say(acked=[m.data for m in got])
        consumer = asyncio.ensure_future(consume())
        while True:
            await bus.publish("t", [OutgoingMessage(n + j, 10) for j in range(20)])
            say(published=list(range(n, n + 20)))
            n += 20

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def run_child(data_dir: Path, mode: str, kill_after_lines: int | None) -> list[dict[str, Any]]:
    """Run CHILD; in `free` mode kill it with SIGKILL after it printed `kill_after_lines` lines."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    try:
        for line in proc.stdout:
            lines.append(json.loads(line))
            if kill_after_lines is not None and len(lines) >= kill_after_lines:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return lines


async def test_kill_9_loses_no_committed_message_and_redelivers_no_committed_ack(tmp_path: Path) -> None:
    lines = run_child(tmp_path, "scripted", None)
    published = {v for line in lines for v in line.get("published", [])}
    acked = set(lines[-1]["acked"])
    poison = lines[-1]["poison"]
    assert len(published) == 301 and len(acked) == 40 and lines[-1]["attempt"] == 2

    s = sub("s", "t", max_delivery_attempts=2, dead_letter_topic="dead")
    bus = await opened(tmp_path, s, sub("d", "dead"))
    assert bus.recovery_report is not None and not bus.recovery_report.corrupt
    got = await drain(bus, "s")
    values = [m.data for m in got]
    assert len(values) == len(set(values))  # each once
    expected = published - acked - {poison}
    assert expected <= set(values)
    assert not set(values) & (acked | {poison})
    in_flight = set(values) - expected  # the publish under way at the kill: all of it or none
    assert in_flight in (set(), set(range(2000, 2010)))
    attempts = {m.data: m.attempt for m in got}
    delivered = set(lines[-1]["delivered"])
    assert {v: attempts[v] for v in expected & delivered} == dict.fromkeys(expected & delivered, 2)
    assert {v: attempts[v] for v in expected - delivered} == dict.fromkeys(expected - delivered, 1)
    [dead] = await drain(bus, "d")  # its second (last) delivery was cut short: dead-lettered, not delivered again
    assert dead.data.reason == "exhausted 2 delivery attempts; last: delivery interrupted by a restart"
    assert dead.data.payload == str(poison).encode()
    await bus.close()


async def test_kill_9_mid_run_keeps_every_confirmed_publish(tmp_path: Path) -> None:
    lines = run_child(tmp_path, "free", 60)
    confirmed: set[int] = set()
    durable_acks: set[int] = set()
    pending_acks: set[int] = set()
    for line in lines:
        if "acked" in line:
            pending_acks.update(line["acked"])
        if "published" in line:  # a publish that returned: every ack made before it is committed too
            confirmed.update(line["published"])
            durable_acks |= pending_acks
            pending_acks = set()
    assert confirmed and durable_acks
    bus = await opened(tmp_path, sub("s", "t", max_delivery_attempts=2, dead_letter_topic="dead"), sub("d", "dead"))
    values = [m.data for m in await drain(bus, "s")]
    assert len(values) == len(set(values))
    assert not set(values) & durable_acks
    assert confirmed - durable_acks - pending_acks <= set(values)
    await bus.close()


# -- retention and the disk bound -------------------------------------------------------


async def test_retention_deletes_old_acked_messages_only(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("r", "t"), retention=timedelta(milliseconds=50))
    await bus.publish("t", msgs(*range(10)))
    bus.ack("r", [m.ack_id for m in await pull(bus, "r")])
    await bus.publish("t", msgs("unacked"))
    await bus.enforce_retention()
    assert bus.storage_stats().stored_messages == 11  # acked but younger than the retention: kept
    await asyncio.sleep(0.08)
    await bus.enforce_retention()
    stats = bus.storage_stats()
    assert (stats.stored_messages, stats.retention_deleted, stats.unacked_messages) == (1, 10, 1)
    await bus.close()
    bus = await opened(tmp_path, sub("r", "t"))
    assert [m.data for m in await drain(bus, "r")] == ["unacked"]
    await bus.close()


async def test_stored_bytes_are_trimmed_to_max_bytes_oldest_acked_first(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("z", "t"), max_bytes=20_000)
    for i in range(20):
        await bus.publish("t", msgs(*(f"{i}-{j}-" + "x" * 90 for j in range(10))))
        bus.ack("z", [m.ack_id for m in await pull(bus, "z")])
    await bus.publish("t", msgs("last"))
    stats = bus.storage_stats()
    assert stats.stored_bytes <= 20_000 and stats.retention_deleted > 0
    assert stats.stored_messages < 201
    await bus.close()
    with sqlite3.connect(tmp_path / "bus.db") as conn:
        oldest, newest = conn.execute("SELECT min(first_seq), max(last_seq) FROM segments").fetchone()
    conn.close()
    assert oldest > 1 and newest == 201  # the oldest went first
    bus = await opened(tmp_path, sub("z", "t"))
    assert [m.data for m in await drain(bus, "z")] == ["last"]  # the unacked one is kept
    await bus.close()


async def test_drop_oldest_drops_and_counts_the_oldest_unacked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await opened(tmp_path, sub("o", "t"), max_bytes=2000, full_policy="drop_oldest")
    payload = "y" * 100  # about 125 stored bytes each with the record overhead
    await bus.publish("t", msgs(*(f"{i}{payload}" for i in range(10))))
    [leased] = (await pull(bus, "o"))[:1]  # the oldest is leased when it is dropped
    bus.nack("o", [m.ack_id for m in bus._subs["o"].leased.values() if m.ack_id != leased.ack_id])
    with caplog.at_level(logging.WARNING, logger="gateway.bus.sqlite"):
        await bus.publish("t", msgs(*(f"{i}{payload}" for i in range(10, 20))))
    stats = bus.storage_stats()
    assert stats.dropped_oldest > 0 and stats.unacked_bytes <= 2000
    assert "dropped the" in caplog.text
    bus.ack("o", [leased.ack_id])  # its ack id died with it
    assert bus.stats("o").acked == 0
    got = [m.data for m in await drain(bus, "o", wait=0.3)]
    assert f"0{payload}" not in got and f"19{payload}" in got
    assert len(got) == 20 - stats.dropped_oldest
    await bus.close()


async def test_block_makes_publish_wait_for_acks(tmp_path: Path) -> None:
    metrics = Metrics()
    bus = await opened(tmp_path, sub("b", "t"), metrics=metrics, max_bytes=1000, full_policy="block")
    await bus.publish("t", msgs(*("z" * 300 for _ in range(3))))  # 3 x ~313 stored bytes: 939 < 1000
    blocked = asyncio.create_task(bus.publish("t", msgs("z" * 300, "z" * 300)))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(blocked), 0.1)
    assert bus.stats("b").backlog == 4  # taken while below the bound, then waiting
    batch = await pull(bus, "b")
    bus.ack("b", [batch[0].ack_id, batch[1].ack_id])
    assert await asyncio.wait_for(blocked, 1) == 1
    assert bus.storage_stats().dropped_oldest == 0
    waited = metrics.registry.get_sample_value("gateway_publish_blocked_seconds_total", {"topic": "t"})
    assert waited is not None and waited >= 0.09
    await bus.close()


# -- damaged and unusable files ---------------------------------------------------------


async def test_garbage_file_is_moved_aside_and_a_new_one_works(tmp_path: Path) -> None:
    (tmp_path / "bus.db").write_bytes(os.urandom(64 * 1024))
    bus = await opened(tmp_path, sub("g", "t"))
    report = bus.recovery_report
    assert report is not None and report.corrupt and report.moved_to is not None
    assert report.moved_to.exists() and report.moved_to.name.startswith("bus.db.corrupt-")
    assert report.messages_recovered == 0 and report.lost and report.problems
    await bus.publish("t", msgs("fresh"))
    assert [m.data for m in await pull(bus, "g")] == ["fresh"]
    await bus.close()


async def test_truncated_file_keeps_what_can_be_read_and_says_what_is_lost(tmp_path: Path) -> None:
    s = sub("tr", "t")
    bus = await opened(tmp_path, s)
    for i in range(40):  # one segment per publish: 40 rows over many pages
        await bus.publish("t", msgs(*(f"{i}-{j}-" + "q" * 500 for j in range(20))))
    await bus.close()
    path = tmp_path / "bus.db"
    os.truncate(path, path.stat().st_size // 2)
    bus = await opened(tmp_path, s)
    report = bus.recovery_report
    assert report is not None and report.corrupt and report.moved_to is not None
    assert 0 < report.messages_recovered < 800
    assert any("unreadable" in line for line in report.lost)
    got = await drain(bus, "tr")
    assert len(got) == report.messages_recovered  # positions survived: everything recovered is delivered
    assert [m.data for m in got[:2]] == ["0-0-" + "q" * 500, "0-1-" + "q" * 500]
    await bus.publish("t", msgs("after"))
    assert [m.data for m in await pull(bus, "tr")] == ["after"]
    await bus.close()


def overwrite_root_page(path: Path, table: str) -> None:
    """Damage one table of a closed database file: garbage over its b-tree root page."""
    with sqlite3.connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    conn.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


async def test_lost_positions_mean_everything_recovered_is_delivered_again(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("pl", "t"))
    await bus.publish("t", msgs(*range(10)))
    bus.ack("pl", [m.ack_id for m in (await pull(bus, "pl"))[:5]])
    await bus.close()
    overwrite_root_page(tmp_path / "bus.db", "subs")
    bus = await opened(tmp_path, sub("pl", "t"))
    report = bus.recovery_report
    assert report is not None and report.corrupt and report.messages_recovered == 10
    assert any("positions are lost" in line for line in report.lost)
    assert [m.data for m in await drain(bus, "pl")] == list(range(10))  # at least once: the acked 5 again
    await bus.close()
    bus = await opened(tmp_path, sub("pl", "t"))  # positions are kept again from now on
    assert bus.stats("pl").backlog == 0
    await bus.close()


async def test_undecodable_stored_data_is_reported_and_the_rest_delivered(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("ud", "t"))
    await bus.publish("t", msgs("a", "b"))
    await bus.publish("t", msgs("c"))
    await bus.close()
    with sqlite3.connect(tmp_path / "bus.db") as conn:
        conn.execute("UPDATE segments SET data = X'0102' WHERE first_seq = (SELECT min(first_seq) FROM segments)")
    conn.close()
    bus = await opened(tmp_path, sub("ud", "t"))
    report = bus.recovery_report
    assert report is not None and not report.corrupt
    assert report.lost == ("2 stored message(s) could not be decoded and are lost (sequence numbers 1..2)",)
    assert report.messages_recovered == 1
    assert [m.data for m in await drain(bus, "ud")] == ["c"]
    await bus.close()


async def test_a_subscription_moved_to_another_topic_starts_afresh(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("mv", "t"))
    await bus.publish("t", msgs(1))
    await bus.close()
    bus = await opened(tmp_path, sub("mv", "u"))
    assert bus.stats("mv").backlog == 0
    await bus.publish("u", msgs(2))
    assert [m.data for m in await pull(bus, "mv")] == [2]
    await bus.close()


async def test_publishes_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    bus = await opened(tmp_path, sub("gc", "t"), synchronous="full")
    before = bus.storage_stats().commits
    await asyncio.gather(*(bus.publish("t", msgs(i)) for i in range(50)))
    commits = bus.storage_stats().commits - before
    assert 1 <= commits < 10  # the first publish commits alone, the 49 others join one or a few commits
    assert sorted(m.data for m in await pull(bus, "gc")) == list(range(50))
    await bus.close()


async def test_files_that_must_not_be_touched_raise_bus_open_error(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE readings (x)")
    with pytest.raises(BusOpenError, match="not a bus database"):
        await SQLiteBus(SQLiteBusConfig(path=str(other)), tmp_path).open()
    assert other.exists()

    first = await opened(tmp_path, sub("l", "t"))
    with pytest.raises(BusOpenError, match="in use by another process"):
        await SQLiteBus(SQLiteBusConfig(), tmp_path).open()
    await first.close()


async def test_a_failing_disk_closes_the_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bus = await opened(tmp_path, sub("f", "t"))

    def broken(self: Any, p: Any, due: bool) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(_sqlite_store.Store, "apply", broken)
    with pytest.raises(BusStorageError, match="disk is full"):
        await bus.publish("t", msgs(1))
    with pytest.raises(BusClosed):
        await bus.pull("f")
    await bus.close()


async def test_constructor_does_no_io_and_methods_need_open(tmp_path: Path) -> None:
    bus = SQLiteBus(SQLiteBusConfig(path="sub/dir/b.db"), tmp_path)
    assert bus.path == tmp_path / "sub/dir/b.db" and not (tmp_path / "sub").exists()
    with pytest.raises(RuntimeError, match="open"):
        bus.create_topic("t")
    with pytest.raises(ValueError):
        SQLiteBusConfig.model_validate({"retention": "1h", "bogus": 1})
    cfg = SQLiteBusConfig.model_validate({"commit_interval": "2ms", "retention": "1h"})
    assert cfg.commit_interval == timedelta(milliseconds=2) and cfg.retention == timedelta(hours=1)
