"""The device simulator without a broker: payloads against the gateway's real validation,
fault kinds and their reject codes, determinism, pacing, anomalies, counting, wire format, CLI."""

from __future__ import annotations

import asyncio
import io
import itertools
import math
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pydantic import ValidationError

from device_sim import driver
from device_sim.anomalies import THRESHOLD_C
from device_sim.cli import build_parser, config_from_args, parse_broker
from device_sim.config import BurstSpec, SimConfig
from device_sim.driver import Prefetch, churn_group
from device_sim.faults import EXPECTED_REJECT, FAULT_KINDS, OVERSIZE_BYTES, FaultPlan
from device_sim.fleet import Fleet, SimMessage
from device_sim.pacing import Schedule
from device_sim.report import format_status, format_summary
from device_sim.stats import LatencyHistogram, Stats, Summary
from device_sim.wire import PacketReader, connect_packet, packet_id, publish_head, remaining_length, utf8
from gateway.core.message import RawMessage
from gateway.ingress.topics import RouteConfig, TopicRouter
from gateway.validation.config import SchemaConfig, ValidationConfig
from gateway.validation.decode import Decoder, DecodeResult

CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
START_NS = 1_795_000_000_000_000_000  # 2026-11-17T...Z: a fixed, present-day start


def gateway_decoder() -> Decoder:
    """The Decoder the gateway builds from config/gateway.yaml (routes, schemas, limits)."""
    try:
        from gateway.settings import load_settings
    except ImportError:
        data = yaml.safe_load(CONFIG_PATH.read_text(encoding="utf-8"))
        router = TopicRouter([RouteConfig.model_validate(r) for r in data["routes"]])
        schemas = {name: SchemaConfig.model_validate(s) for name, s in data["schemas"].items()}
        return Decoder(router, schemas, ValidationConfig.model_validate(data.get("validation", {})))
    settings = load_settings(CONFIG_PATH)
    return Decoder(TopicRouter(settings.routes), settings.schemas, settings.validation)


DECODER = gateway_decoder()


def decode(message: SimMessage, received_ns: int | None = None) -> DecodeResult:
    raw = RawMessage(message.topic, message.payload, qos=1, received_ns=received_ns or START_NS + 10**9)
    return DECODER.decode(raw)


def fleet(**options: Any) -> Fleet:
    return Fleet(SimConfig(**options), START_NS)


# --- valid payloads pass the gateway's validation ------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"devices": 40, "rate": 1.0, "sites": 3},
        {"devices": 12, "total_rate": 50_000.0},  # sub-millisecond spacing: no epoch-ms devices
        {"devices": 30, "rate": 2.0, "anomalies": True, "clock_skew": "2m"},
        {"devices": 7, "rate": 1.0, "batch": 10, "burst": BurstSpec(factor=8.0)},
        {"devices": 5, "rate": 1.0, "topic_template": "sites/{site}/devices/{device_id}/telemetry", "sites": 2},
    ],
)
def test_valid_messages_pass_the_gateway_validation(options: dict[str, Any]) -> None:
    sim = fleet(**options)
    total = 0
    for index in range(400):
        message = sim.message(index)
        result = decode(message, received_ns=message_time(sim, index))
        assert result.rejects == [], (message.payload, [r.dead_letter.reason for r in result.rejects])
        assert len(result.readings) == message.readings == sim.batch
        for reading in result.readings:
            assert reading.device_id == message.device_id
            assert reading.tags["site"] == sim.site(message.device)
            assert set(reading.fields) >= {"temperature", "battery", "counter", "firmware"}
        total += len(result.readings)
    assert total == 400 * sim.batch


@pytest.mark.parametrize(
    "options",
    [
        {"devices": 40, "rate": 1.0, "sites": 3},
        {"devices": 12, "total_rate": 50_000.0},
        {"devices": 5, "rate": 1.0, "topic_template": "sites/{site}/devices/{device_id}/telemetry", "sites": 2},
    ],
)
def test_a_fleets_single_readings_are_decoded_together_as_one_by_one(options: dict[str, Any]) -> None:
    """The ingest path's `decode_singles` answers for a realistic fleet (every timestamp form
    the simulator writes) and gives each message's reading as decoding it alone does."""
    sim = fleet(**options)
    raws = []
    for index in range(256):
        message = sim.message(index)
        raws.append(RawMessage(message.topic, message.payload, qos=0, received_ns=message_time(sim, index)))
    alone = [DECODER.decode(raw).readings for raw in raws]  # also fills the decoder's topic cache
    for start in range(0, len(raws), 64):
        together = DECODER.decode_singles(raws[start : start + 64])
        assert together is not None
        for reading, [expected] in zip(together, alone[start : start + 64], strict=True):
            assert reading == expected
            assert list(reading.fields.items()) == list(expected.fields.items())
            assert list(reading.tags.items()) == list(expected.tags.items())
            assert [type(v) for v in reading.fields.values()] == [type(v) for v in expected.fields.values()]


def message_time(sim: Fleet, index: int) -> int:
    """When the message would arrive: its due time (so clock-skew limits apply as live)."""
    return START_NS + round(sim.schedule.time_of(index) * 1e9) + 5_000_000


def test_payload_shape_and_device_ids() -> None:
    sim = fleet(devices=3, rate=1.0, sites=2, id_prefix="dev-")
    message = sim.message(4)
    assert message.device == 1 and message.device_id == "dev-00001"
    assert message.topic == "devices/dev-00001/telemetry"
    body = orjson.loads(message.payload)
    assert list(body)[:3] == ["device_id", "ts", "temperature"]
    assert body["site"] in {"site-00", "site-01"}
    assert -40 <= body["temperature"] <= 125 and 0 <= body["battery"] <= 100
    assert isinstance(body["counter"], int) and body["counter"] >= 0
    assert body["firmware"].startswith("1.")
    assert fleet(devices=123_456, rate=1.0).device_id(42) == "dev-000042"


def test_signals_per_device_over_time() -> None:
    sim = fleet(devices=4, rate=1.0, batch=3)
    per_device: dict[int, list[dict[str, Any]]] = {}
    for index in range(4 * 300):
        message = sim.message(index)
        per_device.setdefault(message.device, []).extend(orjson.loads(message.payload))
    for readings in per_device.values():
        counters = [r["counter"] for r in readings]
        assert counters == list(range(counters[0], counters[0] + len(counters)))
        stamps = [decode_ts(r["ts"]) for r in readings]
        assert all(a < b for a, b in itertools.pairwise(stamps)), "timestamps strictly increase"
        batteries = [r["battery"] for r in readings]
        assert all(a >= b for a, b in itertools.pairwise(batteries))
        temperatures = [r["temperature"] for r in readings]
        assert min(temperatures) > 10 and max(temperatures) < 35 and len(set(temperatures)) > 50
        assert len({r["firmware"] for r in readings}) <= 2


def decode_ts(value: object) -> int:
    from gateway.validation.timestamps import parse_timestamp

    return parse_timestamp(value)


def test_daily_cycle_moves_the_temperature() -> None:
    sim = fleet(devices=1, rate=1.0)
    profile = sim.profile(0)
    hourly: list[float] = [
        profile.reading(0, START_NS + h * 3600 * 10**9, 0.0, "dev-00000", "site-00")["temperature"] for h in range(24)
    ]
    spread = max(hourly) - min(hourly)
    assert 2 * profile.amplitude - 2.0 < spread < 2 * profile.amplitude + 2.0
    peak_hour = (START_NS // 10**9 // 3600 + hourly.index(max(hourly))) % 24
    assert 9 <= peak_hour <= 17  # afternoon UTC, earlier for some sites


# --- bad messages: each kind, its reject code, its proportions -------------------------------


@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("batch", [1, 4])
def test_each_fault_kind_is_rejected_for_its_own_reason(kind: str, batch: int) -> None:
    sim = fleet(devices=9, rate=1.0, bad_ratio=0.5, batch=batch)
    seen = 0
    for index in range(200):
        message = sim.message(index)
        if message.fault != kind:
            continue
        seen += 1
        result = decode(message)
        codes = [r.code for r in result.rejects]
        assert codes == [EXPECTED_REJECT[kind]], (kind, message.payload[:200], codes)
        element_level = kind in {"wrong_type", "out_of_range", "missing_field", "device_mismatch"}
        assert len(result.readings) == (batch - 1 if element_level else 0)
    assert seen >= 10


def test_fault_payload_details() -> None:
    sim = fleet(devices=3, rate=1.0, bad_ratio=1.0)
    by_kind = {m.fault: m for m in (sim.message(i) for i in range(14))}
    assert set(by_kind) == set(FAULT_KINDS)
    assert b":NaN," in by_kind["nan"].payload
    assert len(by_kind["too_large"].payload) > 256 * 1024
    assert len(by_kind["too_large"].payload) <= OVERSIZE_BYTES + 64
    assert orjson.loads(by_kind["wrong_type"].payload)["temperature"].replace(".", "").isdigit()


def test_bad_ratio_gives_exact_even_proportions() -> None:
    plan = FaultPlan(0.1)
    kinds = Counter(plan.kind_for(i) for i in range(7000))
    assert kinds[None] == 6300
    assert all(kinds[k] == 100 for k in FAULT_KINDS)
    assert FaultPlan(1 / 3).bad_before(3000) == 1000
    assert all(FaultPlan(0.0).kind_for(i) is None for i in range(1000))


def test_device_mismatch_is_left_out_without_a_device_id_in_the_topic() -> None:
    sim = fleet(devices=2, rate=1.0, bad_ratio=1.0, topic_template="plant/{site}/telemetry")
    assert {sim.message(i).fault for i in range(60)} == set(FAULT_KINDS) - {"device_mismatch"}


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_in_any_order() -> None:
    options: dict[str, Any] = {
        "devices": 25,
        "rate": 3.0,
        "seed": 11,
        "bad_ratio": 0.2,
        "anomalies": True,
        "batch": 3,
        "sites": 4,
        "clock_skew": "10m",
    }
    first = [fleet(**options).message(i).payload for i in range(300)]
    backwards = fleet(**options)
    second = [backwards.message(i).payload for i in reversed(range(300))][::-1]
    assert first == second
    other = [fleet(**{**options, "seed": 12}).message(i).payload for i in range(300)]
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 250


def test_process_shares_make_up_the_whole_fleet() -> None:
    sim = fleet(devices=10, rate=1.0, anomalies=True)
    end = sim.end_for_count(5000)
    whole = list(sim.indices(range(10), end))
    shares = [list(sim.indices(range(p, 10, 3), end)) for p in range(3)]
    assert len(whole) == 5000
    assert sorted(i for share in shares for i in share) == whole
    assert all(share == sorted(share) for share in shares)


# --- pacing -------------------------------------------------------------------------------------


def test_constant_rate_schedule_has_no_drift() -> None:
    schedule = Schedule(300.0)
    assert schedule.time_of(0) == 0.0
    assert schedule.time_of(300) == pytest.approx(1.0)
    assert schedule.time_of(300 * 86_400 * 365) == pytest.approx(86_400 * 365, abs=1e-6)
    assert schedule.count_before(1.0) == 300
    assert schedule.count_before(0.0) == 0
    assert schedule.count_before(10.0005) == 3001
    for seconds in (0.001, 0.5, 7.25, 1234.5678):
        n = schedule.count_before(seconds)
        assert schedule.time_of(n) >= seconds > schedule.time_of(n - 1)


def test_bursts_raise_the_rate_periodically() -> None:
    schedule = Schedule(100.0, BurstSpec(factor=5.0, every=timedelta(seconds=10), length=timedelta(seconds=1)))
    assert schedule.count_before(1.0) == 500  # the burst second: 5x
    assert schedule.count_before(10.0) == 500 + 900
    assert schedule.count_before(11.0) == 1400 + 500
    assert schedule.mean_rate == pytest.approx(140.0)
    times = [schedule.time_of(i) for i in range(5000)]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert schedule.time_of(1400) == pytest.approx(10.0)


def test_devices_are_interleaved_evenly() -> None:
    sim = fleet(devices=4, rate=2.0)  # fleet rate 8/s
    assert [sim.message(i).device for i in range(6)] == [0, 1, 2, 3, 0, 1]
    assert sim.schedule.time_of(4) - sim.schedule.time_of(0) == pytest.approx(0.5)


def test_count_with_silent_devices_is_exact() -> None:
    sim = fleet(devices=3, rate=1.0, anomalies=True)
    assert sorted(sim.anomalies.roles.values()) == ["flap", "silent", "spike"]
    end = sim.end_for_count(1000)
    indices = list(sim.indices(range(3), end))
    assert len(indices) == 1000 and end > 1000
    assert not sim.is_skipped(indices[-1])
    assert sum(1 for i in range(end) if not sim.is_skipped(i)) == 1000


def test_churn_rounds_cover_every_connection() -> None:
    rounds = [churn_group(epoch, 10, 0.25) for epoch in range(1, 9)]
    assert all(len(r) == 3 for r in rounds)
    assert Counter(c for r in rounds for c in r) == Counter({c: 2 for c in range(10)}) + Counter(range(4))
    assert churn_group(1, 3, 0.01) == [0]


# --- anomalies and clock skew ------------------------------------------------------------------


def test_anomalies_spike_flap_and_silence() -> None:
    sim = fleet(devices=60, rate=1.0, anomalies=True)
    roles = sim.anomalies.roles
    assert Counter(roles.values()) == Counter({"spike": 2, "flap": 2, "silent": 2})
    spike = next(d for d, r in roles.items() if r == "spike")
    flap = next(d for d, r in roles.items() if r == "flap")
    silent = next(d for d, r in roles.items() if r == "silent")
    temps = {
        d: [orjson.loads(sim.message(s * 60 + d).payload)["temperature"] for s in range(240)] for d in (spike, flap)
    }
    assert max(temps[spike]) > THRESHOLD_C > min(temps[spike])
    flapping = [t for t in temps[flap] if t in (THRESHOLD_C - 1, THRESHOLD_C + 1)]
    assert len(flapping) >= 30 and {THRESHOLD_C - 1, THRESHOLD_C + 1} <= set(flapping)
    skipped = [s for s in range(240) if sim.is_skipped(s * 60 + silent)]
    assert len(skipped) == 60  # 30 s of every 120 s, over 240 s
    assert skipped == list(range(skipped[0], skipped[0] + 30)) + list(range(skipped[0] + 120, skipped[0] + 150))


def test_clock_skew_shifts_some_devices_and_the_gateway_sees_it() -> None:
    sim = fleet(devices=40, rate=1.0, clock_skew="10m")
    skews = sim.anomalies.skews_ns
    assert len(skews) == 4 and all(abs(s) == 600 * 10**9 for s in skews.values())
    for device, skew in skews.items():
        result = decode(sim.message(device), received_ns=message_time(sim, device))
        expected = ["clock_skew"] if skew > 0 else []  # 10 minutes ahead: beyond the 5 minute limit
        assert [r.code for r in result.rejects] == expected


# --- counting, summary, report ----------------------------------------------------------------


def test_latency_histogram_quantiles_and_merge() -> None:
    first, second = LatencyHistogram(), LatencyHistogram()
    for i in range(1, 1001):
        first.record(i / 1000.0)  # 1 ms .. 1 s
    second.record(5.0)
    first.merge(second)
    p50, p99 = first.quantile(0.5), first.quantile(0.99)
    assert p50 is not None and p99 is not None
    assert p50 == pytest.approx(0.5, rel=0.011) and p99 == pytest.approx(0.99, rel=0.011)
    assert first.quantile(1.0) == pytest.approx(5.0, rel=0.011)
    assert LatencyHistogram().quantile(0.5) is None


def test_stats_round_trip_and_summary() -> None:
    stats = Stats(sent=10, acknowledged=9, failed=1, readings=30)
    stats.count_bad("nan")
    stats.latency.record(0.002)
    copy = Stats.from_wire(orjson.loads(orjson.dumps(stats.to_wire())))
    copy.merge(stats)
    assert (copy.sent, copy.acknowledged, copy.failed, copy.bad_by_kind) == (20, 18, 2, {"nan": 2})
    summary = Summary.build(
        copy, 2.0, started_ns=1, qos=1, mode="per-device", devices=3, connections=3, processes=1, interrupted=False
    )
    assert summary.achieved_rate == 10.0 and summary.latency_p50_ms == pytest.approx(2.0, rel=0.011)
    assert "nan 2" in format_summary(summary)
    qos0 = Summary.build(
        copy, 2.0, started_ns=1, qos=0, mode="multiplexed", devices=3, connections=1, processes=1, interrupted=True
    )
    assert qos0.latency_p99_ms is None and "(interrupted)" in format_summary(qos0)
    assert "errors       2" in format_status(1.0, 5.0, (20, 18, 2))


# --- MQTT wire format ---------------------------------------------------------------------------


def test_remaining_length_encoding() -> None:
    assert remaining_length(0) == b"\x00"
    assert remaining_length(127) == b"\x7f"
    assert remaining_length(128) == b"\x80\x01"
    assert remaining_length(16_383) == b"\xff\x7f"
    assert remaining_length(16_384) == b"\x80\x80\x01"
    assert remaining_length(268_435_455) == b"\xff\xff\xff\x7f"
    with pytest.raises(ValueError):
        remaining_length(268_435_456)


def test_packets_and_reader() -> None:
    topic = utf8("devices/dev-00001/telemetry")
    payload = b"x" * 300
    qos1 = publish_head(topic, len(payload), 1) + packet_id(7) + payload
    qos0 = publish_head(topic, len(payload), 0) + payload
    connect = connect_packet("sim-1", 60, "user", "pw")
    assert connect[0] == 0x10 and connect[-2:] == b"pw" and connect[9] == 0xC2  # user+password+clean
    stream = qos1 + qos0 + b"\x40\x02\x00\x07" + connect
    reader = PacketReader()
    packets = [p for i in range(len(stream)) for p in reader.feed(stream[i : i + 1])]
    assert [first for first, _ in packets] == [0x32, 0x30, 0x40, 0x10]
    assert packets[0][1].endswith(b"\x00\x07" + payload) and packets[2][1] == b"\x00\x07"
    with pytest.raises(ValueError):
        list(PacketReader().feed(b"\x30\xff\xff\xff\xff\x01"))
    with pytest.raises(ValueError):
        packet_id(0)


# --- configuration and CLI ---------------------------------------------------------------------


def test_config_rules() -> None:
    assert SimConfig(devices=4).fleet_rate == 4.0
    assert SimConfig(devices=4, total_rate=10).device_rate == 2.5
    assert SimConfig(devices=2001).mode == "multiplexed" and SimConfig(devices=2001).effective_connections == 16
    assert SimConfig(devices=10, connections=2).mode == "multiplexed"
    assert SimConfig(duration="1h30m").duration == timedelta(hours=1, minutes=30)
    assert SimConfig(ca_file=Path("ca.pem")).tls
    bad: list[dict[str, Any]] = [
        {"rate": 1, "total_rate": 2},
        {"processes": 2},
        {"connections": 2, "processes": 3},
        {"topic_template": "devices/{id}/t"},
        {"topic_template": "devices/+/t"},
        {"duration": "soon"},
        {"bad_ratio": 1.5},
        {"unknown": 1},
    ]
    for options in bad:
        with pytest.raises(ValidationError):
            SimConfig(**options)
    assert BurstSpec.parse("3,20s,2s").length == timedelta(seconds=2)
    for text in ("1,10s", "5,1s,2s", "x"):
        with pytest.raises((ValueError, ValidationError)):
            BurstSpec.parse(text)


def test_broker_addresses() -> None:
    assert parse_broker("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, False)
    assert parse_broker("mqtts://broker.example") == ("broker.example", 8883, True)
    assert parse_broker("localhost") == ("localhost", 1883, False)
    assert parse_broker("mqtt://[::1]:1999") == ("::1", 1999, False)
    for text in ("http://x:1", "mqtt://x:port", "mqtt://x:1/path", "mqtt://"):
        with pytest.raises(ValueError):
            parse_broker(text)


def test_cli_options_become_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE_SIM_PASSWORD", "from-env")
    args = build_parser().parse_args(
        [
            "--broker",
            "mqtts://127.0.0.1:8884",
            "--devices",
            "30",
            "--total-rate",
            "600",
            "--count",
            "90",
            "--qos",
            "0",
            "--batch",
            "5",
            "--bad-ratio",
            "0.1",
            "--burst",
            "--churn",
            "10s",
            "--username",
            "u",
            "--connections",
            "4",
            "--processes",
            "2",
            "--clock-skew",
            "10m",
            "--anomalies",
        ]
    )
    config = config_from_args(args)
    assert (config.host, config.port, config.tls) == ("127.0.0.1", 8884, True)
    assert config.password is not None and config.password.get_secret_value() == "from-env"
    assert config.burst == BurstSpec() and config.churn == timedelta(seconds=10)
    assert config.mode == "multiplexed" and config.fleet_rate == 600.0 and config.count == 90
    assert config.clock_skew == timedelta(minutes=10)
    flag = config_from_args(build_parser().parse_args(["--password", "flag"]))
    assert flag.password is not None and flag.password.get_secret_value() == "flag"
    help_text = io.StringIO()
    build_parser().print_help(help_text)
    for option in ("--bad-ratio", "--connections", "--summary-json", "examples:", "device-sim --devices"):
        assert option in help_text.getvalue()
    assert math.isclose(config.device_rate, 20.0)


async def test_preload_fills_to_the_end_of_the_run_or_to_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    f = fleet(devices=7, total_rate=1000, count=600)
    whole = Prefetch(f, f.indices(range(7), f.end_for_count(600)))
    await whole.preload(asyncio.Event())
    assert whole.exhausted and len(whole.buffer) == 600
    assert [m.index for m in whole.buffer] == sorted(m.index for m in whole.buffer)

    monkeypatch.setattr(driver, "PRELOAD_MESSAGES", 300)
    bounded = Prefetch(f, f.indices(range(7), f.end_for_count(600)))
    await bounded.preload(asyncio.Event())
    assert not bounded.exhausted and 300 <= len(bounded.buffer) < 300 + driver.CHUNK

    stopped = asyncio.Event()
    stopped.set()
    idle = Prefetch(f, f.indices(range(7), f.end_for_count(600)))
    await idle.preload(stopped)
    assert not idle.buffer
