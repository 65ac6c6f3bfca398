"""A publish of several readings travels as one `ReadingBatch` bus message.

Covers the pieces: how the ingress groups readings into bus messages, the codec's byte form
of a batch, its dead letter, and the sink runner, which unpacks a batch so that the sink
settles each reading on its own and the message is acked only once all of them are settled.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.bus import codec
from gateway.bus.memory import MemoryBus
from gateway.core.bus import OutgoingMessage, SubscriptionConfig
from gateway.core.message import DeadLetter, RawMessage, Reading, ReadingBatch, dead_letter_for
from gateway.core.metrics import Metrics
from gateway.core.sink import WriteResult
from gateway.ingest import READING_MEMORY, singles_messages, telemetry_messages
from tests.unit.test_sink_runner import MS, FakeBus, FakeSink, make_runner, readings, running, value, wait_until


def reading(device: str, i: int, **fields: Any) -> Reading:
    return Reading("env", device, {"device_id": device}, fields or {"t": i + 0.5}, 1_000 + i, 2_000)


# -- grouping at the ingress ------------------------------------------------------------------


def test_one_reading_stays_a_plain_reading_message() -> None:
    r = reading("d1", 0)
    [m] = telemetry_messages([r], 120)
    assert m.data is r and m.size == 120 + READING_MEMORY and m.ordering_key == "d1"


def test_readings_of_one_device_become_one_batch_message_of_the_payload_size() -> None:
    rs = [reading("d1", i) for i in range(50)]
    [m] = telemetry_messages(rs, 5_000)
    assert isinstance(m.data, ReadingBatch) and m.data.readings == rs
    assert m.size == 5_000 + 50 * READING_MEMORY and m.ordering_key == "d1"


def test_mixed_devices_are_cut_into_runs_in_publish_order() -> None:
    rs = [reading("a", 0), reading("a", 1), reading("b", 2), reading("a", 3)]
    out = telemetry_messages(rs, 400)
    assert [m.ordering_key for m in out] == ["a", "b", "a"]
    assert isinstance(out[0].data, ReadingBatch) and out[0].data.readings == rs[:2]
    assert out[1].data is rs[2] and out[2].data is rs[3]
    assert [m.size for m in out] == [200 + 2 * READING_MEMORY, 100 + READING_MEMORY, 100 + READING_MEMORY]


def test_single_reading_publishes_of_several_devices_become_one_unkeyed_message() -> None:
    rs = [reading("a", 0), reading("b", 1), reading("a", 2)]
    raws = [RawMessage(f"devices/{r.device_id}/telemetry", b"x" * (100 + i)) for i, r in enumerate(rs)]
    [m] = singles_messages(rs, raws, shared=True)
    assert isinstance(m.data, ReadingBatch) and m.data.readings == rs and m.ordering_key is None
    assert m.size == 303 + 3 * READING_MEMORY  # what the three would have counted one by one


# -- the codec ----------------------------------------------------------------------------------


def test_a_batch_round_trips_in_one_json_array() -> None:
    batch = ReadingBatch([reading("d1", i, t=i * 0.1, n=i, ok=True, fw="1.2") for i in range(3)])
    blob = codec.encode(batch)
    assert blob[:1] == b"B" and len(orjson.loads(blob[1:])) == 3
    back = codec.decode(blob)
    assert type(back) is ReadingBatch and back == batch
    assert [type(v) for v in back.readings[2].fields.values()] == [float, int, bool, str]


def test_a_batch_sharing_one_tags_dict_is_stored_once_per_shared_part() -> None:
    tags = {"device_id": "d1", "site": "s1"}
    fields: list[dict[str, Any]] = [{"t": i * 0.1, "n": i, "ok": True, "fw": "1.2"} for i in range(4)]
    rows = [Reading("env", "d1", tags, f, 1_000 + i, 2_000) for i, f in enumerate(fields)]
    blob = codec.encode(ReadingBatch(rows))
    assert blob[:1] == b"C" and blob.count(b"site") == 1
    back = codec.decode(blob)
    assert type(back) is ReadingBatch and back.readings == rows
    assert back.readings[0].tags is back.readings[3].tags
    assert [type(v) for v in back.readings[2].fields.values()] == [float, int, bool, str]


@pytest.mark.parametrize(
    "change",
    [
        {"tags": {"device_id": "d1", "site": "s1"}},  # equal, but another dict
        {"measurement": "power"},
        {"received_ns": 2_001},
        {"device_id": "d2"},
    ],
    ids=repr,
)
def test_a_batch_sharing_less_takes_the_general_form(change: dict[str, Any]) -> None:
    tags = {"device_id": "d1", "site": "s1"}
    rows = [Reading("env", "d1", tags, {"t": i * 0.5}, 1_000 + i, 2_000) for i in range(3)]
    for key, new in change.items():
        setattr(rows[1], key, new)
    blob = codec.encode(ReadingBatch(rows))
    assert blob[:1] == b"B"
    assert codec.decode(blob).readings == rows


def test_a_shared_batch_with_values_json_cannot_carry_round_trips_reading_by_reading() -> None:
    tags = {"device_id": "d1"}
    rows = [Reading("env", "d1", tags, {"t": v}, 1_000 + i, 2_000) for i, v in enumerate([1.5, math.inf])]
    blob = codec.encode(ReadingBatch(rows))
    assert blob[:1] == b"b"
    assert codec.decode(blob).readings[1].fields["t"] == math.inf


def test_a_batch_with_values_json_cannot_carry_round_trips_reading_by_reading() -> None:
    batch = ReadingBatch([reading("d1", 0, t=1.5), reading("d1", 1, t=math.nan, big=2**70, neg=-math.inf)])
    blob = codec.encode(batch)
    assert blob[:1] == b"b"
    back = codec.decode(blob)
    assert type(back) is ReadingBatch and back.readings[0] == batch.readings[0]
    fields = back.readings[1].fields
    assert math.isnan(fields["t"]) and fields["big"] == 2**70 and fields["neg"] == -math.inf


@pytest.mark.parametrize("bad", [ReadingBatch([]), ReadingBatch(["not a reading"])])  # type: ignore[list-item]
def test_an_empty_batch_or_one_holding_other_values_is_refused(bad: ReadingBatch) -> None:
    with pytest.raises(codec.CodecError, match="one or more Readings"):
        codec.encode(bad)


@pytest.mark.parametrize(
    "blob",
    [
        b"B[]",
        b"B{}",
        b"B[[1]]",
        b"b" + codec.encode({"a": 1}),
        b"bR[1",
        b"C[]",
        b'C["m","d",{},1,[],[]]',
        b'C["m","d",{},1,[{"v":1}],[1,2]]',
        b'C["m","d",{},1,{"v":1},[1]]',
        b'C["m","d",{},1,[{"v":1}]]',
    ],
)
def test_bytes_that_are_no_batch_are_refused_on_decode(blob: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(blob)


def test_a_batch_of_several_devices_round_trips() -> None:
    batch = ReadingBatch([reading("a", 0), reading("b", 1, t=2, ok=True), reading("a", 2)])
    blob = codec.encode(batch)
    assert blob[:1] == b"B" and codec.decode(blob) == batch


def test_encode_many_mixes_batches_and_readings() -> None:
    items: list[object] = [reading("a", 0), ReadingBatch([reading("b", 1), reading("b", 2)]), reading("c", 3)]
    assert [codec.decode(b) for b in codec.encode_many(items)] == items


# -- dead letters -------------------------------------------------------------------------------


def test_a_batch_dead_letter_keeps_every_reading() -> None:
    batch = ReadingBatch([reading("d1", 0), reading("d1", 1)])
    letter = dead_letter_for(batch, "5 attempts", source="subscription:tsdb", attempts=5)
    assert letter.topic == "reading/env/d1" and letter.received_ns == 2_000 and letter.attempts == 5
    assert [p["time_ns"] for p in orjson.loads(letter.payload)] == [1_000, 1_001]


def test_a_dead_letter_of_several_devices_names_none_of_them_in_its_topic_but_each_in_its_tags() -> None:
    batch = ReadingBatch([reading("d1", 0), reading("d2", 1)])
    letter = dead_letter_for(batch, "5 attempts", source="subscription:tsdb", attempts=5)
    assert letter.topic == "reading/env/+"
    assert [p["tags"]["device_id"] for p in orjson.loads(letter.payload)] == ["d1", "d2"]


# -- the sink runner ----------------------------------------------------------------------------


async def test_the_sink_sees_the_readings_and_the_message_is_acked_once() -> None:
    sink, bus = FakeSink(), FakeBus()
    runner, metrics = make_runner(sink, bus)
    single = readings(1, "d0")[0]
    batch = ReadingBatch(readings(4, "d1"))
    ids = bus.add_batch([single, batch])
    async with running(runner):
        await wait_until(lambda: len(bus.acked) == 2)
    assert sink.calls == [[single, *batch.readings]]
    assert sorted(bus.acked) == ids
    assert value(metrics, "gateway_sink_written_total") == 5
    assert metrics.registry.get_sample_value("gateway_ingest_to_stored_seconds_count", {"sink": "fake"}) == 5


async def refuse_one(batch: ReadingBatch, refused: int) -> tuple[DeadLetter, Metrics]:
    """Run `batch` through a runner whose sink refuses reading `refused` and takes the rest;
    return the one dead letter (once the batch is acked) and the runner's metrics."""
    accepted = [i for i in range(len(batch.readings)) if i != refused]
    sink = FakeSink(script=[WriteResult(accepted=accepted, rejected={refused: "field 'v' out of range"})])
    bus = FakeBus()
    runner, metrics = make_runner(sink, bus)
    [mid] = bus.add_batch([batch])
    async with running(runner):
        await wait_until(lambda: bus.acked == [mid])
    [letter] = [m.data for m in bus.published["deadletter"]]
    assert isinstance(letter, DeadLetter) and letter.reason == "field 'v' out of range"
    return letter, metrics


async def test_a_refused_reading_is_dead_lettered_alone_and_the_rest_of_its_batch_stored() -> None:
    batch = ReadingBatch(readings(3, "d1"))
    letter, metrics = await refuse_one(batch, 1)
    assert orjson.loads(letter.payload)["time_ns"] == batch.readings[1].time_ns
    assert value(metrics, "gateway_sink_written_total") == 2
    assert value(metrics, "gateway_sink_failed_total") == 1


async def test_a_refused_reading_of_a_batch_of_several_devices_is_dead_lettered_under_its_own_device() -> None:
    batch = ReadingBatch([*readings(2, "d1"), *readings(1, "d2")])
    letter, metrics = await refuse_one(batch, 2)
    assert letter.topic == f"reading/{batch.readings[2].measurement}/d2"
    assert value(metrics, "gateway_sink_written_total") == 2


async def test_a_batch_is_not_acked_while_one_of_its_readings_is_retried() -> None:
    batch = ReadingBatch(readings(3, "d1"))
    other = readings(1, "d2")[0]
    sink = FakeSink(script=[WriteResult(accepted=[0, 2, 3], retry=[1], reason="timeout")])
    bus = FakeBus()
    runner, _ = make_runner(sink, bus, retry_min_backoff=200 * MS, retry_max_backoff=200 * MS)
    batch_id, other_id = bus.add_batch([batch, other])
    async with running(runner):
        await wait_until(lambda: bus.acked == [other_id])
        assert batch_id in runner._holding.ack_ids  # still leased while its reading 1 waits for the retry
        await wait_until(lambda: bus.acked == [other_id, batch_id])
    assert sink.calls[1] == [batch.readings[1]]
    assert not runner._holding.open_batches


async def test_a_batch_too_large_is_split_between_its_readings() -> None:
    batch = ReadingBatch(readings(4, "d1"))
    bad = batch.readings[3]

    def store(items: list[Any]) -> WriteResult:
        return WriteResult.split_all(len(items), "413") if bad in items else WriteResult.ok(len(items))

    sink, bus = FakeSink(default=store), FakeBus()
    runner, metrics = make_runner(sink, bus)
    [mid] = bus.add_batch([batch])
    async with running(runner):
        await wait_until(lambda: bus.acked == [mid])
    assert value(metrics, "gateway_sink_written_total") == 3
    assert value(metrics, "gateway_sink_failed_total") == 1


async def test_a_cancelled_drain_leaves_a_half_written_batch_for_the_bus_to_redeliver() -> None:
    name = "batches-drain"
    bus = MemoryBus(metrics=None)
    bus.create_topic(name)
    bus.create_subscription(SubscriptionConfig(name=name, topic=name, ack_deadline=timedelta(milliseconds=30)))
    batch = ReadingBatch(readings(3, "d1"))
    await bus.publish(name, [OutgoingMessage(batch, 300, "d1")])
    first_sink = FakeSink(script=[WriteResult(accepted=[0], retry=[1, 2], reason="slow")])
    first, _ = make_runner(
        first_sink,
        bus,
        subscription=name,
        retry_min_backoff=timedelta(seconds=5),
        retry_max_backoff=timedelta(seconds=5),
    )
    task = asyncio.create_task(first.run())
    await wait_until(lambda: len(first_sink.calls) == 1)
    await asyncio.wait_for(first.stop(timedelta(milliseconds=10)), 1)
    await task
    assert bus.stats(name).acked == 0 and not first._holding.open_batches
    second_sink = FakeSink()
    second, _ = make_runner(second_sink, bus, subscription=name)
    async with running(second):
        await wait_until(lambda: bus.stats(name).acked == 1)
    assert second_sink.calls == [batch.readings]
    await bus.close()


# -- the durable bus ----------------------------------------------------------------------------


async def test_batches_paged_to_disk_and_recovered_after_a_restart_come_back_equal(tmp_path: Path) -> None:
    from gateway.bus.sqlite import SQLiteBus, SQLiteBusConfig
    from gateway.core.bus import BatchPolicy

    config = SubscriptionConfig(
        name="tsdb", topic="telemetry", max_outstanding_messages=3, batch=BatchPolicy(max_latency=timedelta(0))
    )
    batches = [ReadingBatch([reading(f"d{k}", i, t=k + i / 10) for i in range(5)]) for k in range(10)]

    async def opened() -> SQLiteBus:
        bus = SQLiteBus(SQLiteBusConfig(synchronous="normal"), tmp_path, None)
        await bus.open()
        bus.create_topic("telemetry")
        bus.create_subscription(config)
        return bus

    bus = await opened()
    await bus.publish("telemetry", [OutgoingMessage(b, 500, b.readings[0].device_id) for b in batches])
    first = await asyncio.wait_for(bus.pull("tsdb"), 1)  # the window: 3 of 10; the rest waits on disk
    bus.ack("tsdb", [first[0].ack_id])
    await bus.close()

    bus = await opened()
    got: list[Any] = []
    while len(got) < 9:
        pulled = await asyncio.wait_for(bus.pull("tsdb"), 1)
        bus.ack("tsdb", [m.ack_id for m in pulled])
        got += [m.data for m in pulled]
    await bus.close()
    assert got == batches[1:] and all(type(b) is ReadingBatch for b in got)
