"""The client ingress's batch path decodes single-reading messages a chunk at a time
(`Decoder.decode_singles`) and hands over exactly the readings decoding them one by one
gives: one bus message per chunk, or, when a telemetry subscription orders by key, one per
publish as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.app import Gateway
from gateway.core.bus import OutgoingMessage, resolved
from gateway.core.message import RawMessage, ReadingBatch
from gateway.ingest import SINGLES_CHUNK, hand_over_batch
from gateway.settings import DEADLETTER_TOPIC, TELEMETRY_TOPIC, load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.external.yaml"
NOW_MS = 1_795_000_000_000


class HeldBus:
    """Keeps what is handed over, per topic."""

    def __init__(self) -> None:
        self.topics: dict[str, list[OutgoingMessage]] = {}

    async def hand_over(self, topic: str, messages: list[OutgoingMessage]) -> Any:
        self.topics.setdefault(topic, []).extend(messages)
        return resolved()


def gateway(tmp_path: Path, ordered: bool = False) -> tuple[Gateway, HeldBus]:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    config["data_dir"] = str(tmp_path / "data")
    if ordered:
        config["bus"]["subscriptions"]["tsdb"]["ordering"] = True
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    gw = Gateway(load_settings(path), config_path=path)
    bus = HeldBus()
    gw.bus = bus  # type: ignore[assignment]
    return gw, bus


def messages() -> list[RawMessage]:
    """Singles of many devices; a malformed one and one with a wrong type in the second chunk."""
    raws = []
    for i in range(2 * SINGLES_CHUNK + 10):
        device = f"dev-{i % 37:05d}"
        body: dict[str, Any] = {"device_id": device, "ts": NOW_MS + i, "temperature": 20.5 + i % 50, "site": "s1"}
        payload = orjson.dumps(body)
        if i == SINGLES_CHUNK + 5:
            payload = payload[:-1]
        if i == SINGLES_CHUNK + 9:
            payload = orjson.dumps({**body, "temperature": "warm"})
        raws.append(RawMessage(f"devices/{device}/telemetry", payload, received_ns=(NOW_MS + i) * 10**6))
    return raws


def handed_over(bus: HeldBus) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for topic, sent in bus.topics.items():
        rows = out.setdefault(topic, [])
        for m in sent:
            data = m.data
            if topic == TELEMETRY_TOPIC:
                rows.append((m.size, m.ordering_key, data, list(data.tags.items()), list(data.fields.items())))
            else:
                rows.append((m.size, m.ordering_key, data.code, data.reason, data.payload))
    return out


def dead_letters(bus: HeldBus) -> list[tuple[Any, ...]]:
    return [(m.size, m.data.code, m.data.reason, m.data.payload) for m in bus.topics[DEADLETTER_TOPIC]]


def telemetry(bus: HeldBus) -> tuple[list[tuple[Any, ...]], int]:
    """The readings handed over, in order, with their tags and fields in order; and the sum of sizes."""
    readings = []
    for m in bus.topics[TELEMETRY_TOPIC]:
        for r in m.data.readings if isinstance(m.data, ReadingBatch) else [m.data]:
            readings.append((r, list(r.tags.items()), list(r.fields.items())))
    return readings, sum(m.size for m in bus.topics[TELEMETRY_TOPIC])


def counts(gw: Gateway) -> tuple[Any, ...]:
    sample = gw.metrics.registry.get_sample_value
    invalid = {
        code: sample("gateway_messages_invalid_total", {"reason": code}) for code in ("malformed_json", "wrong_type")
    }
    return sample("gateway_messages_valid_total"), sample("gateway_readings_valid_total"), invalid


@pytest.mark.parametrize("ordered", [False, True])
async def test_chunks_decoded_together_hand_over_what_one_by_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ordered: bool
) -> None:
    raws = messages()
    together, bus = gateway(tmp_path / "together", ordered)
    for raw in raws:  # topics seen once, as a running gateway would have seen them
        together.decoder.decode(raw)
    calls: list[bool] = []
    decode_singles = together.decoder.decode_singles
    monkeypatch.setattr(
        together.decoder, "decode_singles", lambda chunk: calls.append(bool(r := decode_singles(chunk))) or r
    )
    await (await hand_over_batch(together, raws))

    alone, alone_bus = gateway(tmp_path / "alone", ordered)
    monkeypatch.setattr(alone.decoder, "decode_singles", lambda chunk: None)
    await (await hand_over_batch(alone, raws))

    assert calls == [True, False, True]  # the chunk with the two bad messages goes one by one
    assert together.telemetry_unordered is not ordered
    if ordered:  # one message per publish, keyed by its device, as decoding one by one gives
        assert handed_over(bus) == handed_over(alone_bus)
        assert len(bus.topics[TELEMETRY_TOPIC]) == len(raws) - 2
    else:  # a plainly valid chunk is one message of several devices, without a key
        assert telemetry(bus) == telemetry(alone_bus)
        assert len(telemetry(bus)[0]) == len(raws) - 2
        sent = bus.topics[TELEMETRY_TOPIC]
        shapes = [(len(m.data.readings) if isinstance(m.data, ReadingBatch) else 1, m.ordering_key) for m in sent]
        second = [raw.topic.split("/")[1] for raw in raws[SINGLES_CHUNK : 2 * SINGLES_CHUNK]]
        del second[9], second[5]  # the two bad ones
        assert shapes == [(SINGLES_CHUNK, None), *[(1, device) for device in second], (10, None)]
        assert dead_letters(bus) == dead_letters(alone_bus)
    assert [d.data.code for d in bus.topics[DEADLETTER_TOPIC]] == ["malformed_json", "wrong_type"]
    assert counts(together) == counts(alone) == (len(raws) - 2, len(raws) - 2, {"malformed_json": 1, "wrong_type": 1})


async def test_publishes_of_our_own_forwarders_are_skipped_and_only_their_chunk_goes_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, bus = gateway(tmp_path)
    gw._own_clients = {"our-forwarder"}
    raws = [r for r in messages() if b'"warm"' not in r.payload and r.payload.endswith(b"}")]
    raws[3] = RawMessage(raws[3].topic, raws[3].payload, received_ns=raws[3].received_ns, client_id="our-forwarder")
    for raw in raws:
        gw.decoder.decode(raw)
    calls: list[bool] = []
    decode_singles = gw.decoder.decode_singles
    monkeypatch.setattr(gw.decoder, "decode_singles", lambda chunk: calls.append(True) or decode_singles(chunk))
    await (await hand_over_batch(gw, raws))
    assert len(calls) == len(range(0, len(raws), SINGLES_CHUNK)) - 1  # not for the chunk holding it
    assert len(telemetry(bus)[0]) == len(raws) - 1  # the forwarder's publish is no telemetry
