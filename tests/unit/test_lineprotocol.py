"""Line protocol encoding: escaping of hostile names and values, value formatting, refusals,
and the round trip through the strict parser."""

from __future__ import annotations

import contextlib
import enum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.message import FieldValue, Reading
from gateway.sinks import lineprotocol_lines
from gateway.sinks.lineprotocol import LineProtocolError, Precision, encode_reading
from gateway.sinks.lineprotocol_lines import encode_batch, encode_lines
from gateway.sinks.lineprotocol_parse import parse_line

T = 1_700_000_000_123_456_789


def reading(
    measurement: str = "env",
    tags: dict[str, str] | None = None,
    fields: dict[str, FieldValue] | None = None,
    time_ns: int = T,
) -> Reading:
    tags = {"device_id": "d1"} if tags is None else tags
    return Reading(measurement, tags.get("device_id", "d1"), tags, {"v": 1.5} if fields is None else fields, time_ns)


def test_plain_reading() -> None:
    r = reading(tags={"site": "s1", "device_id": "d1"}, fields={"t": 21.5, "n": 3, "ok": True, "s": "hi"})
    assert encode_reading(r) == f'env,device_id=d1,site=s1 t=21.5,n=3i,ok=true,s="hi" {T}'


def test_tags_sorted_and_empty_values_omitted() -> None:
    r = reading(tags={"zeta": "z", "alpha": "a", "empty": "", "mid": "m"})
    assert encode_reading(r) == f"env,alpha=a,mid=m,zeta=z v=1.5 {T}"


def test_no_tags() -> None:
    assert encode_reading(reading(tags={})) == f"env v=1.5 {T}"


@pytest.mark.parametrize(
    ("measurement", "expected"),
    [
        ("a b", r"a\ b"),
        ("a,b", r"a\,b"),
        ("a=b", "a=b"),
        ('a"b', 'a"b'),
        ("a\\b", r"a\\b"),
        ("ends\\", "ends\\\\"),
        ("ünï©ødé 🌡", "ünï©ødé\\ 🌡"),
    ],
)
def test_measurement_escaping(measurement: str, expected: str) -> None:
    assert encode_reading(reading(measurement, tags={})) == f"{expected} v=1.5 {T}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a b", r"a\ b"),
        ("a,b", r"a\,b"),
        ("a=b", r"a\=b"),
        ('a"b', 'a"b'),
        ("a\\b", r"a\\b"),
        ("x\\,y", r"x\\\,y"),
        ("é", "é"),
    ],
)
def test_tag_and_field_key_escaping(raw: str, expected: str) -> None:
    r = reading(tags={raw: raw}, fields={raw: 1})
    assert encode_reading(r) == f"env,{expected}={expected} {expected}=1i {T}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("trailing\\", '"trailing\\\\"'),
        ("a, b=c", '"a, b=c"'),
        ("", '""'),
        ("😀", '"😀"'),
    ],
)
def test_string_field_escaping(raw: str, expected: str) -> None:
    assert encode_reading(reading(tags={}, fields={"s": raw})) == f"env s={expected} {T}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (1e20, "1e+20"),
        (1.5e-7, "1.5e-7"),
        (1e-5, "0.00001"),
        (0.1, "0.1"),
        (123456789.125, "123456789.125"),
        (0, "0i"),
        (-42, "-42i"),
        (2**63 - 1, "9223372036854775807i"),
        (-(2**63), "-9223372036854775808i"),
        (True, "true"),
        (False, "false"),
    ],
)
def test_value_formatting(value: FieldValue, expected: str) -> None:
    assert encode_reading(reading(tags={}, fields={"v": value})) == f"env v={expected} {T}"


def test_int_and_float_subclasses_are_formatted_by_their_base_type() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    class Flag(float):
        pass

    line = encode_reading(reading(tags={}, fields={"a": Level.HIGH, "b": Flag(2.5)}))
    assert line == f"env a=3i,b=2.5 {T}"


@pytest.mark.parametrize(
    ("kwargs", "part"),
    [
        ({"measurement": "a\nb"}, "measurement"),
        ({"measurement": "a\rb"}, "measurement"),
        ({"tags": {"k\n": "v"}}, "tag key"),
        ({"tags": {"k": "v\nw"}}, "value of tag 'k'"),
        ({"fields": {"f\n": 1}}, "field key"),
        ({"fields": {"s": "two\nlines"}}, "string value of field 's'"),
    ],
)
def test_newlines_are_refused_naming_the_part(kwargs: dict[str, object], part: str) -> None:
    with pytest.raises(LineProtocolError, match=part):
        encode_reading(reading(**kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": {"v": float("nan")}}, "NaN or infinity"),
        ({"fields": {"v": float("inf")}}, "NaN or infinity"),
        ({"fields": {"v": float("-inf")}}, "NaN or infinity"),
        ({"fields": {"v": 2**63}}, "64-bit"),
        ({"fields": {"v": -(2**63) - 1}}, "64-bit"),
        ({"fields": {"v": None}}, "type NoneType"),
        ({"fields": {"v": b"bytes"}}, "type bytes"),
        ({"fields": {}}, "no fields"),
        ({"measurement": ""}, "measurement is empty"),
        ({"measurement": "#comment"}, "comment"),
        ({"tags": {"": "v"}}, "tag key is empty"),
        ({"fields": {"": 1}}, "field key is empty"),
        ({"tags": {"k": 5}}, "cannot be encoded"),
        ({"time_ns": 1.5}, "not an integer"),
    ],
)
def test_unrepresentable_readings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LineProtocolError, match=message):
        encode_reading(reading(**kwargs))  # type: ignore[arg-type]


def test_line_protocol_error_is_a_value_error() -> None:
    assert issubclass(LineProtocolError, ValueError)


@pytest.mark.parametrize(("precision", "stamp"), [("ns", T), ("us", T // 1000), ("ms", T // 10**6), ("s", T // 10**9)])
def test_precision_converts_the_timestamp(precision: str, stamp: int) -> None:
    assert encode_reading(reading(tags={}), precision).endswith(f" {stamp}")  # type: ignore[arg-type]


def test_encode_batch_joins_lines_with_newlines() -> None:
    batch = [reading(time_ns=1), reading(time_ns=2)]
    assert encode_batch(batch) == b"env,device_id=d1 v=1.5 1\nenv,device_id=d1 v=1.5 2"
    assert encode_batch([]) == b""
    with pytest.raises(LineProtocolError):
        encode_batch([reading(), reading(fields={"v": float("nan")})])


HOSTILE = [
    "plain",
    "a b",
    "a,b",
    "a=b",
    'a"b',
    "a\\b",
    "\\",
    "\\\\",
    "x\\ ",
    "\\,",
    "\\=",
    " lead",
    "trail ",
    "=,= ,",
    "ünï©ødé",
    "tab\there",
    "中文",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_round_trip_of_hostile_names(text: str) -> None:
    measurement = text if not text.startswith("#") else "m" + text
    tags = {text: text, "device_id": "d1"}
    fields: dict[str, FieldValue] = {text: text, f"{text}_i": -7, f"{text}_f": 0.1, f"{text}_b": True}
    r = Reading(measurement, "d1", tags, fields, -5)
    assert parse_line(encode_reading(r)) == (measurement, tags, fields, -5)


def test_round_trip_preserves_types_and_float_bits() -> None:
    fields: dict[str, FieldValue] = {
        "f": 1.0,
        "i": 1,
        "b": False,
        "s": "1",
        "tiny": 5e-324,
        "big": 1.7976931348623157e308,
    }
    _, _, parsed, _ = parse_line(encode_reading(reading(fields=fields)))
    assert parsed == fields
    assert [type(v) for v in parsed.values()] == [type(v) for v in fields.values()]


def test_round_trip_drops_empty_tags() -> None:
    _, tags, _, _ = parse_line(encode_reading(reading(tags={"device_id": "d1", "e": ""})))
    assert tags == {"device_id": "d1"}


@pytest.mark.parametrize(
    "line",
    [
        "env v=1.5",  # no timestamp
        "env v=1.5 12x",
        "env,k=v",
        "env,k= v=1 1",  # empty tag value
        "env,k=v,k=w v=1 1",  # duplicate tag
        "env v=1,v=2 1",  # duplicate field
        "env v=nan 1",
        "env v=inf 1",
        "env v=1u 1",
        "env v=T 1",
        'env v="open 1',
        'env v="a\\nb" 1',  # unknown escape
        "e\\xnv v=1 1",
        "#comment v=1 1",
        " v=1 1",
        "env v=1 1\n",
        "env v=99999999999999999999i 1",
    ],
)
def test_parser_is_strict(line: str) -> None:
    with pytest.raises(LineProtocolError):
        parse_line(line)


def test_encode_lines_leaves_out_what_cannot_be_encoded() -> None:
    good = [reading(time_ns=1), reading(time_ns=2)]
    items: list[object] = [
        good[0],
        reading(fields={"v": float("nan")}),
        "junk",
        reading(tags={"device_id": "d\ud800"}),  # a lone surrogate: not UTF-8
        good[1],
    ]
    body, indices, rejected = encode_lines(items)
    assert body == encode_batch(good) and indices == [0, 4]
    assert sorted(rejected) == [1, 2, 3]
    assert "NaN" in rejected[1] and "str" in rejected[2] and "UTF-8" in rejected[3]
    assert encode_lines([]) == (b"", [], {})


def test_encode_batch_refuses_lone_surrogates() -> None:
    with pytest.raises(LineProtocolError, match="UTF-8"):
        encode_batch([reading(), reading(fields={"s": "\udfff"})])


_text = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=12)
_name = _text.filter(lambda t: t != "")
_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    _text,
)


@settings(max_examples=300, deadline=None)
@given(
    measurement=_name.filter(lambda t: not t.startswith("#")),
    tags=st.dictionaries(_name, _name, max_size=4),
    fields=st.dictionaries(_name, _value, min_size=1, max_size=4),
    time_ns=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_round_trip_property(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], time_ns: int
) -> None:
    line = encode_reading(Reading(measurement, "d", tags, fields, time_ns))
    assert "\n" not in line
    assert parse_line(line) == (measurement, tags, fields, time_ns)


# mostly valid, so that runs of encodable readings (sharing heads) are common; some of each fault
_pool_measurement = st.sampled_from(["env", "power", "env 2"] * 3 + ["#bad", ""])
_pool_tags = st.sampled_from([{"device_id": "d1"}, {"device_id": "d1", "site": "s 1"}, {}] * 3 + [{"d": "\n"}])
_valid_fields = st.dictionaries(st.sampled_from(["t", "h", "fw", "bad key"]), _value, min_size=1, max_size=4)
_faulty_fields = st.sampled_from([{}, {"": 1.0}, {"new\nkey": 1}, {"v": float("inf")}, {"v": 2**64}])
_pool_fields = st.one_of(_valid_fields, _valid_fields, _valid_fields, _faulty_fields)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.one_of(
            st.builds(
                Reading,
                _pool_measurement,
                st.just("d1"),
                _pool_tags,
                _pool_fields,
                st.one_of(st.integers(min_value=0, max_value=2**62), st.just("1")),
            ),
            st.just("not a reading"),
        ),
        max_size=12,
    ),
    precision=st.sampled_from(["ns", "us", "ms", "s"]),
)
def test_encode_lines_equals_encode_reading_item_by_item(rows: list[object], precision: Precision) -> None:
    """The inlined loop of `encode_lines` (shared heads, cached prefixes) against its definition."""
    expected_lines, expected_good = [], []
    for i, item in enumerate(rows):
        with contextlib.suppress(LineProtocolError, AttributeError):
            if isinstance(item, Reading):
                expected_lines.append(encode_reading(item, precision))
                expected_good.append(i)
    body, good, rejected = encode_lines(rows, precision)
    assert body == "\n".join(expected_lines).encode() and good == expected_good
    assert sorted([*good, *rejected]) == list(range(len(rows)))


def test_readings_in_a_row_with_equal_tags_keep_their_own_measurement() -> None:
    tags = {"device_id": "d1"}
    rows = [Reading(m, "d1", dict(tags), {"t": 1.5}, i) for i, m in enumerate(["env", "env", "power", "env"])]
    for _ in range(2):  # the second time with every name cached
        body, _, _ = encode_lines(rows)
        assert body.decode().splitlines() == [encode_reading(r) for r in rows]


# Columns for runs of one shape: each field keeps one type, with the values that must take a
# run off the bulk path mixed in now and then.
_columns = [
    st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1.5, -0.0, 1e-7, 1e22])),
    st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, 7, -(2**63), 2**63 - 1])),
    st.booleans(),
    st.sampled_from(["fw-1.3", "", "%s", "100%", "ünï", "nullable", "tab\there"]),
]
_odd = st.sampled_from(
    [
        "a,b",
        'say "hi"',
        "back\\slash",
        "new\nline",
        "\ud800",
        float("nan"),
        float("inf"),
        2**63,
        -(2**63) - 1,
        2**64,
        1,
        2.5,
        True,
        "7",
    ]
)
_run_shape = st.tuples(
    st.sampled_from(["env", "m%s"]),
    st.sampled_from([{"device_id": "d1"}, {"device_id": "d1", "site": "s 1"}, {"k%": "v%d"}, {}]),
    st.lists(st.sampled_from(["t", "h", "fw", "bad key", "%s", "n"]), min_size=0, max_size=4, unique=True),
)


@st.composite
def _runs(draw: st.DrawFn) -> list[object]:
    """Items in runs that share measurement, tags and field keys (as one device's batch does);
    now and then a value of another type or one that line protocol refuses, a reordered or
    missing key, an odd timestamp, or an item that is not a reading."""
    items: list[object] = []
    for _ in range(draw(st.integers(1, 4))):
        measurement, tags, keys = draw(_run_shape)
        columns = {key: draw(st.sampled_from(_columns)) for key in keys}
        for _ in range(draw(st.integers(1, 8))):
            fields = {key: draw(_odd if draw(st.integers(0, 40)) == 0 else column) for key, column in columns.items()}
            if len(fields) > 1 and draw(st.integers(0, 20)) == 0:
                fields = dict(reversed(fields.items())) if draw(st.booleans()) else dict(list(fields.items())[1:])
            stamp = draw(st.sampled_from(["1", 1.5]) if draw(st.integers(0, 30)) == 0 else st.integers(0, 2**62))
            items.append(Reading(measurement, "d1", tags, fields, stamp))
        if draw(st.integers(0, 3)) == 0:
            items.append("not a reading")
    return items


@settings(max_examples=400, deadline=None)
@given(rows=_runs(), precision=st.sampled_from(["ns", "us", "ms", "s"]))
def test_runs_of_one_shape_equal_encode_reading_item_by_item(rows: list[object], precision: Precision) -> None:
    """The bulk path for runs (one orjson call per run) against the definition, with every
    value that must send a run back to the reading-by-reading path."""
    _assert_as_item_by_item(rows, precision)


_odd_tags = [{"device_id": "d 1"}, {}, {"k%": "v%d"}, {"d": "new\nline"}, {"": "x"}]
_device_tags = st.integers(0, 40).flatmap(
    lambda d: st.sampled_from(_odd_tags) if d == 0 else st.just({"device_id": f"d{d}", "site": f"s{d % 3}"})
)
_loose_columns = [*_columns[:3], st.sampled_from(["fw-1.3", "", "%s", "100%", "ünï", "nullable"])]


@st.composite
def _loose(draw: st.DrawFn) -> list[object]:
    """Single readings of many devices (other tags each time), sharing a few sets of field
    keys; now and then a value of another type or one that line protocol refuses, an odd
    timestamp or measurement, a reordered key, or an item that is not a reading."""
    shapes = [draw(_run_shape)[2] for _ in range(draw(st.integers(1, 3)))]
    columns = {key: draw(st.sampled_from(_loose_columns)) for keys in shapes for key in keys}
    items: list[object] = []
    for _ in range(draw(st.integers(12, 60))):
        if draw(st.integers(0, 60)) == 0:
            items.append("not a reading")
            continue
        keys = draw(st.sampled_from(shapes))
        fields = {key: draw(_odd if draw(st.integers(0, 120)) == 0 else columns[key]) for key in keys}
        if len(fields) > 1 and draw(st.integers(0, 60)) == 0:
            fields = dict(reversed(fields.items()))
        measurement = draw(st.sampled_from(["env", "m%s", "#bad"])) if draw(st.integers(0, 60)) == 0 else "env"
        stamp = draw(st.sampled_from(["1", 1.5]) if draw(st.integers(0, 80)) == 0 else st.integers(0, 2**62))
        items.append(Reading(measurement, "d", draw(_device_tags), fields, stamp))
    return items


@settings(max_examples=400, deadline=None)
@given(rows=_loose(), precision=st.sampled_from(["ns", "us", "ms", "s"]))
def test_single_readings_of_many_devices_equal_encode_reading_item_by_item(
    rows: list[object], precision: Precision
) -> None:
    """The grouping of single readings by field keys (`_encode_loose`) against the definition:
    every line in its item's place, every refusal as reading by reading."""
    _assert_as_item_by_item(rows, precision)


def _assert_as_item_by_item(rows: list[object], precision: Precision) -> None:
    expected_lines, expected_good, expected_bad = [], [], []
    for i, item in enumerate(rows):
        try:
            if not isinstance(item, Reading):
                raise LineProtocolError
            line = encode_reading(item, precision)
            line.encode()
        except (LineProtocolError, UnicodeEncodeError):
            expected_bad.append(i)
        else:
            expected_lines.append(line)
            expected_good.append(i)
    body, good, rejected = encode_lines(rows, precision)
    if any(i in expected_bad for i in good):  # a lone surrogate: the whole body is redone, checked
        pytest.fail("a reading that cannot be encoded was kept")
    assert body == "\n".join(expected_lines).encode()
    assert good == expected_good and sorted(rejected) == expected_bad


def test_single_readings_of_many_devices_are_formatted_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shapes of field keys, interleaved: two groups, each line in its item's place."""
    rows = [
        Reading(
            "env",
            f"d{i}",
            {"device_id": f"d{i}", "site": f"s{i % 3}"},
            {"t": 20.0 + i / 8, "n": i} if i % 2 else {"t": 20.0 + i / 8, "fw": f"1.{i}", "ok": i % 4 == 0},
            T + i,
        )
        for i in range(40)
    ]
    rows.insert(7, Reading("env", "dx", {"device_id": "dx"}, {"t": 1.5}, T))  # other keys: one by one
    expected = [encode_reading(r, "us") for r in rows]

    def one_by_one(*_: object) -> str:
        raise AssertionError("a reading of a plain group was encoded one by one")

    with monkeypatch.context() as patch:
        real = lineprotocol_lines.field_set
        patch.setattr(lineprotocol_lines, "field_set", lambda f: one_by_one() if len(f) > 1 else real(f))
        patch.setattr(lineprotocol_lines, "encode_reading", one_by_one)
        body, good, rejected = encode_lines(rows, "us")
    assert good == list(range(41)) and not rejected
    assert body.decode().splitlines() == expected


def test_a_long_plain_run_is_one_bulk_format(monkeypatch: pytest.MonkeyPatch) -> None:
    tags = {"device_id": "d1", "site": "s1"}
    rows = [
        Reading("env", "d1", tags, {"t": 20.0 + i / 8, "n": i, "ok": i % 2 == 0, "fw": "1.3"}, T + i) for i in range(50)
    ]

    def one_by_one(*_: object) -> str:
        raise AssertionError("a reading of a plain run was encoded one by one")

    with monkeypatch.context() as patch:
        patch.setattr(lineprotocol_lines, "field_set", one_by_one)
        patch.setattr(lineprotocol_lines, "encode_reading", one_by_one)
        body, good, rejected = encode_lines(rows, "ms")
    assert good == list(range(50)) and not rejected
    assert body.decode().splitlines() == [encode_reading(r, "ms") for r in rows]
    assert (
        body.decode().splitlines()[3] == f'env,device_id=d1,site=s1 t=20.375,n=3i,ok=false,fw="1.3" {(T + 3) // 10**6}'
    )


@pytest.mark.parametrize(
    "odd",
    [
        {"fw": "a,b"},
        {"fw": 'say "hi"'},
        {"fw": "back\\slash"},
        {"fw": "new\nline"},
        {"fw": "\ud800"},
        {"fw": "null"},
        {"fw": 7},
        {"t": float("nan")},
        {"t": float("inf")},
        {"t": 3},
        {"n": 2**63},
        {"n": -(2**63) - 1},
        {"n": 2**64},
        {"n": True},
        {"n": 2.0},
        {"ok": 1},
        {"time_ns": 1.5},
        {"time_ns": "1"},
        {"order": True},
        {"swap": True},
        {"drop": "t"},
        {"extra": 1.0},
    ],
    ids=repr,
)
def test_one_odd_reading_in_a_long_run(odd: dict[str, object]) -> None:
    """Each thing the bulk path must not format itself, in the middle of an otherwise plain run."""
    tags = {"device_id": "d1"}

    def row(i: int) -> Reading:
        return Reading("env", "d1", tags, {"t": 20.5 + i, "h": 40.0, "n": i, "ok": True, "fw": "1.3"}, T + i)

    rows: list[object] = [row(i) for i in range(9)]
    odd_row = row(4)
    for key, value in odd.items():
        if key == "time_ns":
            odd_row.time_ns = value  # type: ignore[assignment]
        elif key == "order":
            odd_row.fields = dict(reversed(odd_row.fields.items()))
        elif key == "swap":  # same types in another order
            odd_row.fields = {"h": odd_row.fields.pop("h"), **odd_row.fields}
        elif key == "drop":
            del odd_row.fields[str(value)]
        elif key == "extra":
            odd_row.fields["x"] = 1.0
        else:
            odd_row.fields[key] = value  # type: ignore[assignment]
    rows[4] = odd_row
    expected = []
    for r in rows:
        with contextlib.suppress(LineProtocolError, AttributeError):
            line = encode_reading(r, "us")  # type: ignore[arg-type]
            if line.isascii() or "\ud800" not in line:
                expected.append(line)
    body, good, rejected = encode_lines(rows, "us")
    assert body.decode().splitlines() == expected
    assert len(good) == len(expected) and len(good) + len(rejected) == len(rows)
