"""The decoder's fast path and topic cache change nothing: every DecodeResult equals the one
the detailed path alone gives (same readings with the same field types and key order, same
rejections with the same codes, reasons and payloads)."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.validation.decode as decode_module
from gateway.core.message import RawMessage, Reading
from gateway.ingress.topics import RouteConfig, TopicRouter
from gateway.validation.config import SchemaConfig, ValidationConfig
from gateway.validation.decode import Decoder, DecodeResult
from gateway.validation.timestamps import MS_FROM, NS_FROM, US_FROM, parse_timestamp
from tests.unit.test_validation import JSON, NOW, ODD_PAYLOADS, ROUTES, SCHEMAS

EDGE_SCHEMAS: dict[str, Any] = {
    **SCHEMAS,
    "edge": {
        "measurement": "edge",
        "fields": {
            "big": {"type": "float", "min": -(2.0**53), "max": 2.0**53},
            "i": {"type": "int", "min": -5.5, "max": 1e30},
            "b": {"type": "bool"},
            "s": {"type": "string"},
            "site": {"type": "string", "tag": True, "required": True},
            "zone": {"type": "string", "tag": True},
        },
    },
    "closed": {
        "measurement": "closed",
        "device_id_field": "dev",
        "timestamp_field": "t",
        "unknown_fields": "reject",
        "fields": {"v": {"type": "float", "required": True}, "k": {"type": "string", "tag": True}},
    },
}
EDGE_ROUTES: list[dict[str, Any]] = [
    *ROUTES,
    {"pattern": "e/{site}/{device_id}", "schema": "edge", "tags": {"zone": "z1"}},
    {"pattern": "e2/{device_id}", "schema": "edge"},
    {"pattern": "c/{k}", "schema": "closed"},
    {"pattern": "c2/#", "schema": "closed", "tags": {"fleet": "f"}},
]
# A topic of each route, with an element its schema accepts.
BASES: dict[str, dict[str, Any]] = {
    "devices/d1/telemetry": {"temperature": 20.0, "ts": 1_700_000_000_000},
    "sites/s1/devices/d9/telemetry": {"temperature": 20.0, "device_id": "d9"},
    "gateways/g1/tanks": {"id": "t1", "level": 1.0, "time": "2023-11-14T22:13:20Z", "firmware": "1"},
    "legacy/x": {"temperature": 20.0, "device_id": "dx", "ts": 1_700_000_000.5},
    "e/s1/d1": {"site": "s1", "big": 1.0, "ts": 1_700_000_000},
    "e2/d1": {"site": "s1", "i": 1, "zone": "z"},
    "c/k1": {"v": 1.0, "dev": "x", "t": 1_700_000_000_000_000},
    "c2/a/b": {"v": 1.0, "dev": "x", "k": "k"},
}
NAMES = sorted({name for base in BASES.values() for name in base} | {"humidity", "battery", "door_open", "count"})
EDGE_VALUES: list[object] = [
    *(2**53 + d for d in (-1, 0, 1)),
    *(2**63 + d for d in (-1, 0)),
    2**64 - 1,
    -(2**63),
    -(2**53) - 1,
    0.0,
    -0.0,
    1e300,
    -40,
    -40.000001,
    85,
    85.0000001,
    -5,
    -6,
    *(bound + d for bound in (MS_FROM, US_FROM, NS_FROM) for d in (-1, 0)),
    1_700_000_300_000,
    1_700_000_300_001,
    1_699_999_999.0,
    1_700_000_000_000_000_000,
    "2023-11-14T22:13:20.123456789+00:00",
    "2023-11-14T22:13:20",
    "",
    "x",
    True,
    False,
    None,
    [],
    {},
]
VALUES = st.one_of(
    st.sampled_from(EDGE_VALUES),
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4),
)
DELETE = object()
CHANGES = st.lists(st.tuples(st.sampled_from(NAMES), st.one_of(VALUES, st.just(math.nan), st.just(DELETE))), max_size=3)


def _never(*_: object) -> Reading | None:
    return None


def _decoder(*, fast: bool, batch: bool = True, **limits: Any) -> Decoder:
    """fast: with the per-element fast path; batch: with the batch fast path too."""
    router = TopicRouter([RouteConfig.model_validate(r) for r in EDGE_ROUTES])
    schemas = {name: SchemaConfig.model_validate(s) for name, s in EDGE_SCHEMAS.items()}
    with pytest.MonkeyPatch.context() as patch:
        if not fast:  # every element takes the detailed path
            patch.setattr(decode_module, "make_reader", lambda schema: _never)
        if not fast or not batch:
            patch.setattr(decode_module, "make_batch_reader", lambda schema: _never)
        return Decoder(router, schemas, ValidationConfig(**limits))


TIGHT_SKEW: dict[str, Any] = {"max_future_skew": "0s", "max_past_skew": "1s"}
LIMITS: list[dict[str, Any]] = [
    {},
    TIGHT_SKEW,
    {"max_future_skew": "999999999d", "max_past_skew": "999999999d"},  # epoch numbers of every unit in range
]
PAIRS = [(_decoder(fast=True, **limits), _decoder(fast=False, **limits)) for limits in LIMITS]
ELEMENT_ONLY = [_decoder(fast=True, batch=False, **limits) for limits in LIMITS]


def outcome(result: DecodeResult) -> tuple[list[Any], list[Any]]:
    """Everything about a result, including field value types and the order of keys."""
    readings = [
        (r.measurement, r.device_id, list(r.tags.items()), [(k, type(v), v) for k, v in r.fields.items()], r.time_ns)
        for r in result.readings
    ]
    return readings, [(r.code, r.dead_letter) for r in result.rejects]


def assert_same(topic: str, payload: bytes) -> DecodeResult:
    """Decode with and without the fast path (under each of LIMITS); the first fast result."""
    results = []
    for (fast, detailed), element_only in zip(PAIRS, ELEMENT_ONLY, strict=True):
        raw = RawMessage(topic, payload, qos=1, received_ns=NOW, client_id="c-1")
        result = fast.decode(raw)
        assert outcome(result) == outcome(detailed.decode(raw))
        assert outcome(result) == outcome(element_only.decode(raw))
        assert outcome(fast.decode(raw)) == outcome(result)  # again, from the topic cache
        results.append(result)
    return results[0]


def dump(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # integers beyond 64 bits, NaN: as other JSON encoders write them
        return json.dumps(value).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(BASES)), st.lists(CHANGES, min_size=1, max_size=3), st.booleans())
def test_near_valid_elements_decode_as_by_the_detailed_path(topic: str, changes: list[Any], batch: bool) -> None:
    elements = []
    for change in changes:
        element = dict(BASES[topic])
        for name, value in change:
            if value is DELETE:
                element.pop(name, None)
            else:
                element[name] = value
        elements.append(element)
    assert_same(topic, dump(elements if batch else elements[0]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([*BASES, "nowhere", ""]), st.one_of(JSON, st.lists(JSON, max_size=4)))
def test_any_json_decodes_as_by_the_detailed_path(topic: str, data: object) -> None:
    assert_same(topic, dump(data))


STAMPS = [NOW + 1, NOW - 10**9 - 1, NOW - 10**9, (NOW - 10**9) // 10**6, (NOW + 10**6) // 10**6, NOW // 10**3 + 1]


@pytest.mark.parametrize("topic", sorted(BASES))
def test_every_single_change_decodes_as_by_the_detailed_path(topic: str) -> None:
    for name in [*NAMES, "other"]:
        for value in [*EDGE_VALUES, *STAMPS, DELETE]:
            element = dict(BASES[topic])
            if value is DELETE:
                element.pop(name, None)
            else:
                element[name] = value
            assert_same(topic, orjson.dumps(element))


@pytest.mark.parametrize("payload", ODD_PAYLOADS)
def test_odd_payloads_decode_as_by_the_detailed_path(payload: bytes) -> None:
    for topic in BASES:
        assert_same(topic, payload)


def test_valid_elements_take_the_fast_path_and_equal_the_detailed_readings() -> None:
    for topic, element in BASES.items():
        result = assert_same(topic, orjson.dumps([element, element]))
        assert len(result.readings) == 2, topic


def test_plainly_valid_elements_never_take_the_detailed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = _decoder(fast=True, **TIGHT_SKEW)
    monkeypatch.setattr(decoder, "_reading", None)  # calling it would be an internal_error
    seconds = NOW // 10**9
    stamps = [seconds - 1, seconds, NOW // 10**6, NOW // 10**3, NOW, float(seconds - 1), "2023-11-14T22:13:20Z"]
    for topic, element in BASES.items():
        field = {"gateways/g1/tanks": "time", "c/k1": "t", "c2/a/b": "t"}.get(topic, "ts")
        batch = [{**element, field: stamp} for stamp in stamps]
        result = decoder.decode(RawMessage(topic, orjson.dumps(batch), received_ns=NOW))
        assert (len(result.readings), result.rejects) == (len(stamps), []), topic


def test_a_tag_field_from_the_payload_keeps_the_tag_order_of_the_detailed_path() -> None:
    (reading,) = assert_same("e/s1/d1", orjson.dumps({"zone": "z1", "site": "s1", "big": 2})).readings
    assert list(reading.tags) == ["zone", "site", "device_id"]
    assert reading.fields == {"big": 2.0}
    assert type(reading.fields["big"]) is float


def test_topic_cache_is_bounded_and_refused_topics_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module, "TOPIC_CACHE_SIZE", 3)
    decoder = _decoder(fast=True)
    for n in range(10):
        raw = RawMessage(f"devices/d{n}/telemetry", b'{"temperature": 1.0}', received_ns=NOW)
        assert decoder.decode(raw).readings[0].device_id == f"d{n}"
        assert 1 <= len(decoder._plans) <= 3
        assert decoder.decode(RawMessage(f"nowhere/{n}", b"{}", received_ns=NOW)).rejects[0].code == "no_route"
    assert all(topic.startswith("devices/") for topic in decoder._plans)


class _Int(int):
    pass


class _Text(str):
    pass


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        (_Int(1_700_000_000), NOW),
        (_Text("2023-11-14T22:13:20Z"), NOW),
        (MS_FROM - 1, (MS_FROM - 1) * 10**9),
        (MS_FROM, MS_FROM * 10**6),
        (US_FROM - 1, (US_FROM - 1) * 10**6),
        (US_FROM, US_FROM * 10**3),
        (-MS_FROM, -MS_FROM * 10**6),
    ],
)
def test_parse_timestamp_forms_and_unit_bounds(stamp: object, expected: int) -> None:
    assert parse_timestamp(stamp) == expected


@pytest.mark.parametrize(("stamp", "reason"), [(True, "got boolean"), (math.inf, "inf is not a finite number")])
def test_parse_timestamp_refusals(stamp: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_timestamp(stamp)


BATCH_STAMPS = st.sampled_from([*STAMPS, NOW, NOW // 10**6, NOW / 10**9, "2023-11-14T22:13:20.5Z", DELETE])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(BASES)), st.data())
def test_mostly_valid_batches_decode_as_by_the_detailed_path(topic: str, data: st.DataObject) -> None:
    """Batches of several elements, each valid or near valid (the batch fast path's ground):
    every element's own timestamp form, now and then a changed value, key or tag."""
    elements = []
    field = {"gateways/g1/tanks": "time", "c/k1": "t", "c2/a/b": "t"}.get(topic, "ts")
    for _ in range(data.draw(st.integers(2, 8))):
        element = dict(BASES[topic])
        stamp = data.draw(BATCH_STAMPS)
        if stamp is DELETE:
            element.pop(field, None)
        else:
            element[field] = stamp
        if data.draw(st.integers(0, 5)) == 0:
            for name, value in data.draw(CHANGES):
                if value is DELETE:
                    element.pop(name, None)
                else:
                    element[name] = value
        elements.append(element)
    assert_same(topic, dump(elements))


def test_plainly_valid_batches_take_the_batch_path() -> None:
    decoder = _decoder(fast=True, **TIGHT_SKEW)

    def refuse(*_: object) -> None:
        raise AssertionError("the per-element path was taken")

    decoder._readers = {name: refuse for name in decoder._readers}
    seconds = NOW // 10**9
    for stamps in ([NOW // 10**6, NOW // 10**6 - 5], [seconds, NOW, "2023-11-14T22:13:20Z", float(seconds - 1)]):
        for topic, element in BASES.items():
            field = {"gateways/g1/tanks": "time", "c/k1": "t", "c2/a/b": "t"}.get(topic, "ts")
            batch = [{**element, field: stamp} for stamp in stamps]
            result = decoder.decode(RawMessage(topic, orjson.dumps(batch), received_ns=NOW))
            assert (len(result.readings), result.rejects) == (len(stamps), []), topic
            first, second = result.readings[:2]
            assert first.tags is second.tags  # equal tags: one dict for the batch


def test_a_batch_with_one_bad_element_is_decoded_element_by_element() -> None:
    element = BASES["devices/d1/telemetry"]
    batch = [element, {**element, "temperature": "hot"}, element]
    result = assert_same("devices/d1/telemetry", orjson.dumps(batch))
    assert len(result.readings) == 2 and [r.code for r in result.rejects] == ["wrong_type"]


@pytest.mark.parametrize(
    ("topic", "odd"),
    [
        ("legacy/x", {"device_id": ""}),
        ("legacy/x", {"device_id": 7}),
        ("legacy/x", {"device_id": None}),
        ("sites/s1/devices/d9/telemetry", {"device_id": "d8"}),
        ("e/s1/d1", {"site": "s2"}),
        ("e/s1/d1", {"zone": "z2"}),
        ("e/s1/d1", {"site": ""}),
        ("e2/d1", {"site": None}),
        ("e2/d1", {"zone": 3}),
        ("c/k1", {"k": "k2"}),
        ("c/k1", {"dev": ""}),
        ("c/k1", {"extra": 1}),
        ("devices/d1/telemetry", {"ts": 0}),
        ("devices/d1/telemetry", {"ts": NOW // 10**6 + 10**9}),
        ("devices/d1/telemetry", {"temperature": None}),
        ("devices/d1/telemetry", {"temperature": 1e9}),
    ],
    ids=repr,
)
def test_one_odd_element_in_a_batch(topic: str, odd: dict[str, object]) -> None:
    """Each rule of the batch path, broken by one element in the middle of a batch."""
    element = BASES[topic]
    result = assert_same(topic, dump([element, {**element, **odd}, element]))
    assert len(result.readings) == 2 and len(result.rejects) == 1
