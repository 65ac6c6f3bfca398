"""Hostile input through guard → decode → line protocol: never an escaping exception, and
every line the gateway writes parses back to the same point."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.message import RawMessage, Reading
from gateway.core.metrics import Metrics
from gateway.ingress.topics import RouteConfig, TopicRouter
from gateway.security.config import RateLimitConfig, SecurityConfig
from gateway.security.guard import Guard
from gateway.sinks.lineprotocol_lines import encode_lines
from gateway.sinks.lineprotocol_parse import parse_line
from gateway.validation.config import SchemaConfig, ValidationConfig
from gateway.validation.decode import Decoder

SCHEMA = {
    "measurement": "environment",
    "fields": {
        "temperature": {"type": "float", "required": True},
        "counter": {"type": "int"},
        "ok": {"type": "bool"},
        "note": {"type": "string"},
        "site": {"type": "string", "tag": True},
    },
}
ROUTES = [
    {"pattern": "devices/{device_id}/telemetry", "schema": "env"},
    {"pattern": "sites/{site}/devices/{device_id}/{stream}", "schema": "env"},
]
ROUTER = TopicRouter([RouteConfig.model_validate(r) for r in ROUTES])
DECODER = Decoder(ROUTER, {"env": SchemaConfig.model_validate(SCHEMA)}, ValidationConfig(max_past_skew="3650d"))
GUARD = Guard(SecurityConfig(rate_limit=RateLimitConfig(messages_per_second=1e9, burst=10**9)), ROUTER, Metrics())
NASTY = ["", "\x00", "a\nb", "a,b", "k=v", "sp ace", 'q"uote', "back\\slash", "\\", "é€😀", "\ud800", "#x", "x" * 300]


def dump(value: Any) -> bytes:
    """JSON as a hostile device might send it: lone surrogates escaped, NaN/Infinity as bare words."""
    return json.dumps(value, ensure_ascii=True).encode()


texts = st.one_of(st.sampled_from(NASTY), st.text(max_size=40))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)
readings = st.fixed_dictionaries(
    {"temperature": st.one_of(st.floats(), st.integers(), texts)},
    optional={
        "device_id": texts,
        "counter": st.one_of(st.integers(), st.floats()),
        "ok": st.booleans(),
        "note": texts,
        "site": texts,
        "ts": st.one_of(st.integers(), texts, st.floats()),
        "extra": json_values,
    },
)
topics = st.one_of(
    st.builds(lambda d: f"devices/{d}/telemetry", texts),
    st.builds(lambda s, d, k: f"sites/{s}/devices/{d}/{k}", texts, texts, texts),
    st.text(max_size=60),
)
payloads = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda r: dump(r), readings),
    st.builds(lambda rs: dump(rs), st.lists(readings, max_size=5)),
    st.builds(lambda v: dump(v), json_values),
)


def run_pipeline(topic: str, payload: bytes) -> tuple[list[Reading], list[Any]]:
    raw = RawMessage(topic, payload, 1, time.time_ns(), "hostile")
    letter = GUARD.check(raw)
    if letter is not None:
        return [], [letter]
    result = DECODER.decode(raw)
    return result.readings, [r.dead_letter for r in result.rejects]


def check_round_trip(found: list[Reading]) -> None:
    body, good, rejected = encode_lines(found)
    assert sorted([*good, *rejected]) == list(range(len(found)))
    lines = body.decode("utf-8").split("\n") if body else []
    assert len(lines) == len(good)
    for index, line in zip(good, lines, strict=True):
        r = found[index]
        measurement, tags, fields, ts = parse_line(line)
        assert measurement == r.measurement
        assert tags == {k: v for k, v in r.tags.items() if v != ""}
        assert fields == r.fields
        assert ts == r.time_ns


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topics, payloads)
def test_any_input_gives_readings_or_reasoned_dead_letters(topic: str, payload: bytes) -> None:
    found, letters = run_pipeline(topic, payload)
    for letter in letters:
        assert letter.code and letter.reason and letter.topic == topic
    assert found or letters
    check_round_trip(found)


HOSTILE: list[tuple[str, bytes]] = [
    ("devices/d/telemetry", b"[" * 100_000 + b"]" * 100_000),
    ("devices/d/telemetry", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    ("devices/d/telemetry", b'{"temperature": 1' + b"0" * 5000 + b"}"),
    ("devices/d/telemetry", b'{"temperature": 1e999999}'),
    ("devices/d/telemetry", b'{"temperature": 1, "counter": 99999999999999999999999999}'),
    ("devices/d/telemetry", b'{"temperature": 1, "note": "' + b"x" * 200_000 + b'"}'),
    ("devices/d\x00/telemetry", b'{"temperature": 1, "device_id": "d\\u0000"}'),
    ("devices/a\nb,c=d e/telemetry", b'{"temperature": 1, "site": "x\\ny"}'),
    ("sites/s,=\\ /devices/d/x", b'{"temperature": 2.5, "site": "s,=\\\\ "}'),
    ("devices/\u00e9\u20ac\U0001f600/telemetry", '{"temperature": 3, "note": "é\\"\\\\"}'.encode()),
    ("devices/d/telemetry", b"\xff\xfe\x00" * 1000),
    ("devices/d/telemetry", b"x" * (10 * 1024 * 1024)),
    ("/".join(["l"] * 5000), b'{"temperature": 1}'),
    ("devices/d/telemetry", b"[" + b",".join([b'{"temperature": 1}'] * 5000) + b"]"),
    ("devices/d/telemetry", b'{"temperature": NaN}'),
    ("devices/d/telemetry", b'{"temperature": 1, "ts": "9999-12-31T23:59:59Z"}'),
]


def test_hostile_corpus() -> None:
    codes = []
    for topic, payload in HOSTILE:
        found, letters = run_pipeline(topic, payload)
        assert found or letters, topic[:40]
        codes += [letter.code for letter in letters]
        check_round_trip(found)
    assert {"too_large", "too_deep", "malformed_json", "too_many_readings"} <= set(codes)
