"""Payload validation: every reject code with its reason, happy paths, timestamps, skew, robustness."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.core.message import RawMessage
from gateway.ingress.topics import RouteConfig, TopicRouter
from gateway.validation.config import FieldSpec, SchemaConfig, ValidationConfig
from gateway.validation.decode import Decoder, DecodeResult
from gateway.validation.schema import CompiledSchema, ElementError

NOW = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
SCHEMAS: dict[str, Any] = {
    "env": {
        "measurement": "environment",
        "fields": {
            "temperature": {"type": "float", "unit": "°C", "min": -40, "max": 85, "required": True},
            "humidity": {"type": "float", "min": 0, "max": 100},
            "battery": {"type": "int", "min": 0, "max": 100},
            "door_open": {"type": "bool"},
            "count": {"type": "int"},
        },
    },
    "strict": {
        "measurement": "tank",
        "device_id_field": "id",
        "timestamp_field": "time",
        "unknown_fields": "reject",
        "fields": {
            "level": {"type": "float"},
            "status": {"type": "string"},
            "firmware": {"type": "string", "tag": True},
        },
    },
}
ROUTES: list[dict[str, Any]] = [
    {"pattern": "sites/{site}/devices/{device_id}/telemetry", "schema": "env", "tags": {"fleet": "north"}},
    {"pattern": "devices/{device_id}/telemetry", "schema": "env"},
    {"pattern": "gateways/{gateway}/tanks", "schema": "strict"},
    {"pattern": "legacy/#", "schema": "env"},
]


def make_decoder(**limits: Any) -> Decoder:
    router = TopicRouter([RouteConfig.model_validate(r) for r in ROUTES])
    schemas = {name: SchemaConfig.model_validate(s) for name, s in SCHEMAS.items()}
    return Decoder(router, schemas, ValidationConfig(**limits))


DECODER = make_decoder()


def decode(payload: object, topic: str = "devices/d1/telemetry", decoder: Decoder = DECODER) -> DecodeResult:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decoder.decode(RawMessage(topic, data, qos=1, received_ns=NOW, client_id="c-1"))


def rejected(payload: object, topic: str = "devices/d1/telemetry", decoder: Decoder = DECODER) -> tuple[str, str]:
    """The (code, reason) of the single rejection the payload must produce."""
    result = decode(payload, topic, decoder)
    assert result.readings == []
    assert len(result.rejects) == 1
    reject = result.rejects[0]
    letter = reject.dead_letter
    assert (letter.topic, letter.source, letter.received_ns, letter.client_id) == (topic, "validation", NOW, "c-1")
    return reject.code, letter.reason


# --- happy paths -----------------------------------------------------------------------------


def test_object_becomes_one_reading_with_typed_fields() -> None:
    result = decode({"temperature": 21, "humidity": 40.5, "battery": 87, "door_open": False, "ts": 1_699_999_999})
    assert result.rejects == []
    (reading,) = result.readings
    assert reading.measurement == "environment"
    assert reading.device_id == "d1"
    assert reading.tags == {"device_id": "d1"}
    assert reading.fields == {"temperature": 21.0, "humidity": 40.5, "battery": 87, "door_open": False}
    assert type(reading.fields["temperature"]) is float
    assert type(reading.fields["battery"]) is int
    assert reading.time_ns == 1_699_999_999_000_000_000
    assert reading.received_ns == NOW


def test_tags_combine_static_tags_placeholders_and_device_id() -> None:
    (reading,) = decode({"temperature": 1.5, "device_id": "d9"}, "sites/s1/devices/d9/telemetry").readings
    assert reading.tags == {"fleet": "north", "site": "s1", "device_id": "d9"}
    assert reading.time_ns == NOW


def test_device_id_tag_and_timestamp_fields_are_configurable() -> None:
    payload = {"id": "tank-3", "time": "2023-11-14T22:00:00Z", "level": 3, "status": "ok", "firmware": "1.2"}
    (reading,) = decode(payload, "gateways/g1/tanks").readings
    assert reading.measurement == "tank"
    assert reading.device_id == "tank-3"
    assert reading.tags == {"gateway": "g1", "firmware": "1.2", "device_id": "tank-3"}
    assert reading.fields == {"level": 3.0, "status": "ok"}
    assert reading.time_ns == NOW - 800 * 10**9


def test_unknown_fields_are_ignored_by_default() -> None:
    (reading,) = decode({"temperature": 1.0, "firmware": "x", "nested": {"a": [1]}}).readings
    assert reading.fields == {"temperature": 1.0}


def test_payload_device_id_is_used_when_the_topic_has_none() -> None:
    (reading,) = decode({"temperature": 1.0, "device_id": "d5"}, "legacy/anything/here").readings
    assert reading.device_id == "d5"
    assert reading.tags == {"device_id": "d5"}


def test_array_batch_keeps_valid_elements_and_rejects_each_invalid_one() -> None:
    batch = [
        {"temperature": 1.0, "ts": 1_700_000_000},
        {"temperature": 99.5, "ts": 1_700_000_001},
        "oops",
        {"temperature": 3.0, "ts": 1_700_000_002},
    ]
    result = decode(batch)
    assert [r.fields["temperature"] for r in result.readings] == [1.0, 3.0]
    assert [r.time_ns for r in result.readings] == [NOW, NOW + 2 * 10**9]
    assert [(r.code, r.dead_letter.reason) for r in result.rejects] == [
        ("out_of_range", "element 2 of 4: field 'temperature': 99.5 is above max 85.0"),
        ("not_object", "element 3 of 4: expected a JSON object, got string"),
    ]
    assert result.rejects[0].dead_letter.payload == b'{"temperature":99.5,"ts":1700000001}'
    assert result.rejects[1].dead_letter.payload == b'"oops"'


def test_single_object_rejection_keeps_the_original_payload_bytes() -> None:
    raw = b'{ "temperature" : 150 }'
    result = decode(raw)
    assert result.rejects[0].dead_letter.payload == raw


# --- whole-message rejections ------------------------------------------------------------------


def test_too_large() -> None:
    decoder = make_decoder(max_payload_bytes=32)
    payload = b'{"temperature": 1.0, "battery": 100}'
    assert rejected(payload, decoder=decoder) == ("too_large", "payload is 36 bytes, more than the limit of 32")
    exactly_at_limit = b'{"temperature": 1.0}'.ljust(32)
    assert decode(exactly_at_limit, decoder=decoder).readings != []


def test_no_route() -> None:
    assert rejected({"temperature": 1.0}, "nowhere/d1") == ("no_route", "no route matches topic 'nowhere/d1'")


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b'{"temperature": ', "unexpected end of data"),
        (b"", "Input is a zero-length, empty document"),
        (b"\xff\xfe", "str is not valid UTF-8"),
        (b'{"temperature": NaN}', "unexpected character"),
        (b'{"temperature": Infinity}', "unexpected character"),
        (b'{"temperature": -Infinity}', "no digit after sign"),
        (b'{"temperature": 1e999}', "number is infinity when parsed as double"),
        (b'{"temperature": -' + b"9" * 400 + b"}", "number is infinity when parsed as double"),
    ],
)
def test_malformed_json_including_non_finite_literals(payload: bytes, detail: str) -> None:
    code, reason = rejected(payload)
    assert code == "malformed_json"
    assert reason.startswith("payload is not valid JSON: ")
    assert detail in reason


@pytest.mark.parametrize(("payload", "kind"), [(b"42", "integer"), (b'"x"', "string"), (b"null", "null")])
def test_not_object(payload: bytes, kind: str) -> None:
    assert rejected(payload) == ("not_object", f"payload must be a JSON object or an array of objects, got {kind}")


def test_empty_batch() -> None:
    assert rejected(b"[]") == ("empty_batch", "payload is an empty JSON array")


def test_too_many_readings() -> None:
    decoder = make_decoder(max_readings_per_message=2)
    expected = ("too_many_readings", "payload has 3 readings, more than the limit of 2")
    assert rejected([{"temperature": 1.0}] * 3, decoder=decoder) == expected
    assert len(decode([{"temperature": 1.0}] * 2, decoder=decoder).readings) == 2


# --- element rejections ------------------------------------------------------------------------

NON_EMPTY = "expected a non-empty string"
EPOCH_OR_RFC = "expected an epoch number or an RFC 3339 string"


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        ({"humidity": 3.0}, "missing_field", "field 'temperature' is required but missing"),
        ({"temperature": 1.0, "battery": 1.5}, "wrong_type", "field 'battery': expected int, got number 1.5"),
        ({"temperature": 1.0, "battery": 3.0}, "wrong_type", "field 'battery': expected int, got number 3.0"),
        ({"temperature": 1.0, "battery": "3"}, "wrong_type", "field 'battery': expected int, got string \"3\""),
        ({"temperature": 1.0, "battery": True}, "wrong_type", "field 'battery': expected int, got boolean true"),
        ({"temperature": 1.0, "door_open": 1}, "wrong_type", "field 'door_open': expected bool, got integer 1"),
        ({"temperature": "21.5"}, "wrong_type", "field 'temperature': expected float, got string \"21.5\""),
        ({"temperature": None}, "wrong_type", "field 'temperature': expected float, got null"),
        ({"temperature": True}, "wrong_type", "field 'temperature': expected float, got boolean true"),
        ({"temperature": 150.0}, "out_of_range", "field 'temperature': 150.0 is above max 85.0"),
        ({"temperature": -50}, "out_of_range", "field 'temperature': -50 is below min -40.0"),
        ({"temperature": 1.0, "battery": 101}, "out_of_range", "field 'battery': 101 is above max 100"),
        (
            {"temperature": 1.0, "count": 2**63},
            "out_of_range",
            "field 'count': 9223372036854775808 is above max 9223372036854775807",
        ),
        (
            b'{"temperature": 1.0, "count": 1000000000000000000000000000000}',
            "wrong_type",
            "field 'count': expected int, got number 1e+30",
        ),
        ({"temperature": 1.0, "device_id": 17}, "wrong_type", f"field 'device_id': {NON_EMPTY}, got integer 17"),
        ({"temperature": 1.0, "device_id": ""}, "wrong_type", f"field 'device_id': {NON_EMPTY}, got an empty string"),
        (
            {"temperature": 1.0, "device_id": "d2"},
            "device_mismatch",
            'field \'device_id\' says device "d2" but the topic says "d1"',
        ),
        (
            {"temperature": 1.0, "ts": "yesterday"},
            "bad_timestamp",
            "field 'ts': 'yesterday' is not an RFC 3339 date-time",
        ),
        (
            {"temperature": 1.0, "ts": "2023-11-14T22:13:20"},
            "bad_timestamp",
            "field 'ts': '2023-11-14T22:13:20' has no UTC offset (add 'Z' or '+hh:mm')",
        ),
        ({"temperature": 1.0, "ts": True}, "bad_timestamp", f"field 'ts': {EPOCH_OR_RFC}, got boolean"),
        ({"temperature": 1.0, "ts": None}, "bad_timestamp", f"field 'ts': {EPOCH_OR_RFC}, got null"),
        ({"temperature": 1.0, "ts": [1]}, "bad_timestamp", f"field 'ts': {EPOCH_OR_RFC}, got array"),
    ],
)
def test_element_rejections(payload: object, code: str, reason: str) -> None:
    assert rejected(payload) == (code, reason)


def test_several_errors_are_listed_and_the_first_decides_the_code() -> None:
    code, reason = rejected({"temperature": 100, "humidity": -1, "battery": "x", "door_open": 0})
    assert code == "out_of_range"
    assert reason == (
        "field 'temperature': 100 is above max 85.0; field 'humidity': -1 is below min 0.0; "
        "field 'battery': expected int, got string \"x\"; and 1 more errors"
    )


def test_unknown_field_when_the_schema_rejects_them() -> None:
    payload = {"id": "t1", "level": 1.0, "colour": "red"}
    expected = ("unknown_field", "field 'colour' is not in schema 'strict' (unknown_fields: reject)")
    assert rejected(payload, "gateways/g1/tanks") == expected


def test_empty_tag_field_is_out_of_range() -> None:
    payload = {"id": "t1", "level": 1.0, "firmware": ""}
    expected = ("out_of_range", "field 'firmware': an empty string is not allowed for a tag")
    assert rejected(payload, "gateways/g1/tanks") == expected


def test_element_without_any_measured_value_is_missing_field() -> None:
    payload = {"id": "t1", "firmware": "1.0"}
    expected = ("missing_field", "no measured value: none of the fields 'level', 'status' is present")
    assert rejected(payload, "gateways/g1/tanks") == expected


def test_missing_device_id() -> None:
    expected = (
        "missing_device_id",
        "no device id: the topic has no {device_id} level and the payload has no 'device_id' field",
    )
    assert rejected({"temperature": 1.0}, "legacy/x") == expected


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_from_other_decoders_are_not_finite(value: float) -> None:
    schema = CompiledSchema("env", SchemaConfig.model_validate(SCHEMAS["env"]))
    with pytest.raises(ElementError) as caught:
        schema.check({"temperature": value})
    assert caught.value.code == "not_finite"
    assert caught.value.reason == f"field 'temperature': {value!r} is not a finite number"


def test_unexpected_failure_is_an_internal_error_never_an_exception() -> None:
    class BrokenRouter(TopicRouter):
        def match(self, topic: str) -> tuple[RouteConfig, dict[str, str]] | None:
            raise RuntimeError("boom")

    schemas = {"env": SchemaConfig.model_validate(SCHEMAS["env"])}
    decoder = Decoder(BrokenRouter([]), schemas, ValidationConfig())
    assert rejected(b'{"temperature": 1}', decoder=decoder) == (
        "internal_error",
        "internal error while decoding: RuntimeError: boom",
    )
    assert decode(b"{}", decoder=decoder).rejects[0].dead_letter.payload == b"{}"


# --- timestamps and skew -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "expected_ns"),
    [
        (1_700_000_000, NOW),
        (1_700_000_000.25, NOW + 250_000_000),
        (1_700_000_000_123, NOW + 123_000_000),
        (1_700_000_000_123.5, NOW + 123_500_000),
        (1_700_000_000_123_456, NOW + 123_456_000),
        (1_700_000_000_123_456_789, NOW + 123_456_789),
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14t22:13:20.5z", NOW + 500_000_000),
        ("2023-11-14T23:13:20+01:00", NOW),
        ("2023-11-14 22:13:20.123456789Z", NOW + 123_456_789),
        ("2023-11-14T22:13:20.1234567Z", NOW + 123_456_700),
    ],
)
def test_timestamp_units_and_rfc3339(stamp: object, expected_ns: int) -> None:
    (reading,) = decode({"temperature": 1.0, "ts": stamp}).readings
    assert reading.time_ns == expected_ns


def test_skew_limits_are_inclusive() -> None:
    ahead, behind = 5 * 60, 30 * 86_400
    assert decode({"temperature": 1.0, "ts": 1_700_000_000 + ahead}).readings[0].time_ns == NOW + ahead * 10**9
    assert decode({"temperature": 1.0, "ts": 1_700_000_000 - behind}).readings[0].time_ns == NOW - behind * 10**9


def test_clock_skew_future_and_past() -> None:
    assert rejected({"temperature": 1.0, "ts": 1_700_000_000 + 5 * 60 + 1}) == (
        "clock_skew",
        "field 'ts': 2023-11-14T22:18:21Z is 0:05:01 ahead of the receive time 2023-11-14T22:13:20Z (limit 0:05:00)",
    )
    assert rejected({"temperature": 1.0, "ts": "2023-10-01T00:00:00Z"}) == (
        "clock_skew",
        "field 'ts': 2023-10-01T00:00:00Z is 44 days, 22:13:20 behind the receive time 2023-11-14T22:13:20Z "
        "(limit 30 days, 0:00:00)",
    )
    assert rejected({"temperature": 1.0, "ts": 1e300}) == (
        "clock_skew",
        "field 'ts': a time outside years 1-9999 is more than 999999999 days ahead of the receive time "
        "2023-11-14T22:13:20Z (limit 0:05:00)",
    )


def test_skew_limits_come_from_config() -> None:
    decoder = make_decoder(max_future_skew=timedelta(0), max_past_skew=timedelta(seconds=1))
    assert rejected({"temperature": 1.0, "ts": 1_700_000_001}, decoder=decoder)[0] == "clock_skew"
    assert rejected({"temperature": 1.0, "ts": 1_699_999_998}, decoder=decoder)[0] == "clock_skew"
    assert decode({"temperature": 1.0, "ts": 1_699_999_999}, decoder=decoder).readings != []


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "float", "min": 2, "max": 1}, r"min \(2.0\) is greater than max \(1.0\)"),
        ({"type": "bool", "min": 0}, "min/max are only allowed for float and int fields, not bool"),
        ({"type": "string", "max": 3}, "min/max are only allowed for float and int fields, not string"),
        ({"type": "int", "tag": True}, "tag fields must be of type string, not int"),
        ({"type": "decimal"}, "Input should be 'float', 'int', 'bool' or 'string'"),
        ({"type": "float", "scale": 2}, "Extra inputs are not permitted"),
    ],
)
def test_bad_field_specs(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FieldSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"measurement": "m", "fields": {"s": {"type": "string", "tag": True}}}, "at least one non-tag field"),
        ({"measurement": "m", "fields": {}}, "at least one non-tag field"),
        ({"measurement": "m", "fields": {"ts": {"type": "int"}}}, "field 'ts' is read by the decoder itself"),
        ({"measurement": "m", "fields": {"device_id": {"type": "string"}}}, "field 'device_id' is read by the decoder"),
        (
            {"measurement": "m", "device_id_field": "id", "fields": {"device_id": {"type": "string", "tag": True}}},
            "tag field 'device_id' is not allowed",
        ),
        ({"measurement": "m", "timestamp_field": "device_id", "fields": {"a": {"type": "int"}}}, "both 'device_id'"),
        ({"measurement": "", "fields": {"a": {"type": "int"}}}, "at least 1 character"),
        ({"measurement": "m", "fields": {"a": {"type": "int"}}, "unknown_fields": "drop"}, "'ignore' or 'reject'"),
    ],
)
def test_bad_schemas(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SchemaConfig.model_validate(schema)


def test_validation_config_parses_durations_and_refuses_negative_skew() -> None:
    config = ValidationConfig.model_validate({"max_future_skew": "PT10M", "max_past_skew": 3600})
    assert (config.max_future_skew, config.max_past_skew) == (timedelta(minutes=10), timedelta(hours=1))
    with pytest.raises(ValidationError, match="cannot be negative"):
        ValidationConfig(max_past_skew=timedelta(seconds=-1))
    with pytest.raises(ValidationError, match="greater than 0"):
        ValidationConfig(max_payload_bytes=0)


def _decoder_for(routes: list[dict[str, Any]], schemas: dict[str, Any]) -> Decoder:
    router = TopicRouter([RouteConfig.model_validate(r) for r in routes])
    return Decoder(router, {n: SchemaConfig.model_validate(s) for n, s in schemas.items()}, ValidationConfig())


def test_decoder_refuses_a_route_naming_an_unknown_schema() -> None:
    with pytest.raises(ValueError, match=r"route 'x/\{device_id\}' names schema 'nope', which is not configured "
                                         r"\(known: 'env', 'strict'\)"):  # fmt: skip
        _decoder_for([{"pattern": "x/{device_id}", "schema": "nope"}], SCHEMAS)


def test_decoder_refuses_fields_named_like_route_tags() -> None:
    schemas = {"s": {"measurement": "m", "fields": {"v": {"type": "float"}, "w": {"type": "float"}}}}
    with pytest.raises(ValueError, match=r"route 's/\{v\}': field 'v' of schema 's' has the same name as placeholder"):
        _decoder_for([{"pattern": "s/{v}", "schema": "s"}], schemas)
    with pytest.raises(ValueError, match="field 'w' of schema 's' has the same name as static tag 'w'"):
        _decoder_for([{"pattern": "s", "schema": "s", "tags": {"w": "x"}}], schemas)


SITE_SCHEMA = {"s": {"measurement": "m", "fields": {"v": {"type": "float"}, "site": {"type": "string", "tag": True}}}}


def test_tag_fields_that_name_route_tags_must_agree_with_them() -> None:
    decoder = _decoder_for(
        [
            {"pattern": "sites/{site}/{device_id}", "schema": "s"},
            {"pattern": "north/{device_id}", "schema": "s", "tags": {"site": "north"}},
        ],
        SITE_SCHEMA,
    )
    for topic, site in (("sites/s1/d1", "s1"), ("north/d1", "north")):
        assert decode({"v": 1.0}, topic, decoder).readings[0].tags == {"site": site, "device_id": "d1"}
        assert decode({"v": 1.0, "site": site}, topic, decoder).readings[0].tags == {"site": site, "device_id": "d1"}
    expected = ("tag_mismatch", 'tag field \'site\' says "s2" but the topic says "s1"')
    assert rejected({"v": 1.0, "site": "s2"}, "sites/s1/d1", decoder) == expected
    expected = ("tag_mismatch", 'tag field \'site\' says "s2" but the route\'s static tag says "north"')
    assert rejected({"v": 1.0, "site": "s2"}, "north/d1", decoder) == expected


def test_decoder_refuses_an_int_field_no_integer_can_satisfy() -> None:
    schemas = {"s": {"measurement": "m", "fields": {"n": {"type": "int", "min": 0.2, "max": 0.8}}}}
    with pytest.raises(ValueError, match=r"schema 's': int field 'n': no integer lies between min 0\.2 and max 0\.8"):
        _decoder_for([], schemas)


# --- robustness --------------------------------------------------------------------------------

ODD_PAYLOADS = [
    b"",
    b"\x00",
    b"\xff" * 10,
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 300 + b"1" + b"}" * 300,
    b"[[[]]]",
    b"[{}]",
    b'[{"temperature": 1}, 3, null, [], {"temperature": "x"}]',
    b'{"temperature": 1, "temperature": 2}',
    b'{"temperature": 1.0, "ts": 18446744073709551615}',
    b'{"temperature": 1.0, "ts": -18446744073709551615}',
    b'{"temperature": 1.0, "ts": 1e308}',
    b'{"temperature": 1.0, "ts": "9999-12-31T23:59:59Z"}',
    b'{"temperature": 1.0, "ts": "0001-01-01T00:00:00+23:59"}',
    b'{"temperature": 1.0, "device_id": {"nested": true}}',
    b'"\\ud800"',
    b"1e999",
    b"-0",
    b"true",
]


@pytest.mark.parametrize("payload", ODD_PAYLOADS)
@pytest.mark.parametrize("topic", ["devices/d1/telemetry", "legacy/x", "gateways/g/tanks", "$SYS/x", ""])
def test_decode_never_raises_on_odd_input(payload: bytes, topic: str) -> None:
    result = DECODER.decode(RawMessage(topic, payload, received_ns=NOW))
    assert result.readings or result.rejects
    assert all(r.code != "internal_error" for r in result.rejects)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5)
)
ELEMENT = st.fixed_dictionaries(
    {},
    optional={
        "temperature": FIELD_VALUES,
        "humidity": FIELD_VALUES,
        "battery": FIELD_VALUES,
        "door_open": FIELD_VALUES,
        "device_id": FIELD_VALUES,
        "ts": st.one_of(FIELD_VALUES, st.integers(1_600_000_000, 1_800_000_000)),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(ELEMENT, st.lists(ELEMENT | JSON, max_size=5), JSON))
def test_every_element_is_either_a_valid_reading_or_a_rejection(data: object) -> None:
    try:
        payload = orjson.dumps(data)
    except orjson.JSONEncodeError:  # integers beyond 64 bits
        payload = repr(data).encode()
    result = DECODER.decode(RawMessage("devices/d1/telemetry", payload, received_ns=NOW))
    assert all(r.code != "internal_error" for r in result.rejects)
    if isinstance(data, list) and result.readings:
        assert len(result.readings) + len(result.rejects) == len(data)
    for reading in result.readings:
        assert reading.device_id == "d1"
        assert isinstance(reading.fields["temperature"], float)
        assert all(math.isfinite(v) for v in reading.fields.values() if isinstance(v, float))
        assert -40 <= reading.fields["temperature"] <= 85


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.text(max_size=20))
def test_decode_never_raises_on_random_bytes(payload: bytes, topic: str) -> None:
    result = DECODER.decode(RawMessage(topic, payload, received_ns=NOW))
    assert all(r.code != "internal_error" for r in result.rejects)
