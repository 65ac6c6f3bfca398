"""The SQLite store's rows: the whole-batch fast path gives the very bytes of the checked path,
and anything it doubts goes the checked way, which refuses item by item."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.message import Reading
from gateway.sinks import sqlite_rows
from gateway.sinks.sqlite_rows import _checked_rows as checked
from gateway.sinks.sqlite_rows import _fast_body, encode_rows

T0 = 1_795_000_000_000_000_000


def reading(fields: dict[Any, Any], tags: dict[Any, Any] | None = None, time_ns: int = T0) -> Reading:
    return Reading("env", "dev-1", {"device_id": "dev-1", **(tags or {})}, fields, time_ns, T0)


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=12),  # includes lone surrogates: not UTF-8
    st.sampled_from(["99999999999999999999", "null", "9223372036854775807"]),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
names = st.one_of(st.text(max_size=6), st.integers(min_value=0, max_value=3))
tag_values = st.one_of(st.text(max_size=6), st.integers(min_value=0, max_value=3))
readings = st.builds(
    reading,
    st.dictionaries(names, values, max_size=4),
    st.dictionaries(st.text(min_size=1, max_size=4), tag_values, max_size=2),
    st.integers(min_value=-(2**64), max_value=2**64),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(readings, min_size=1, max_size=5))
def test_every_batch_is_encoded_as_the_checked_path_encodes_it(items: list[Reading]) -> None:
    assert encode_rows(items) == checked(items)


def test_plain_batches_take_the_fast_path_and_doubts_do_not() -> None:
    plain = [reading({"t": 21.5, "n": 3, "ok": True, "fw": "1.2.3"}, {"site": "a"}, T0 + i) for i in range(100)]
    assert _fast_body(plain) == checked(plain)[0]
    for odd in (
        {"t": float("nan")},
        {"n": 2**63},  # beyond int64, within what orjson writes
        {"n": 2**53 + 1},  # fits int64, but beyond 53 bits only the checked path tells
        {"fw": "\ud800"},
        {"": 1.0},
        {"t": [1.0]},
    ):
        batch = [*plain, reading(odd)]
        assert _fast_body(batch) is None
        body, good, rejected = encode_rows(batch)
        assert (body, good, rejected) == checked(batch)
    assert encode_rows([*plain, reading({"n": 2**53 + 1})])[1] == list(range(101))
    assert _fast_body([reading({"t": 1.0}, time_ns=2**63)]) is None


def test_the_tags_cache_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(sqlite_rows, "_tags_text", {})
    monkeypatch.setattr(sqlite_rows, "_TAGS_CACHE_LIMIT", 3)
    items = [reading({"t": 1.0}, {"site": f"s{i}"}) for i in range(10)]
    assert encode_rows(items) == checked(items)
    assert len(sqlite_rows._tags_text) == 3
