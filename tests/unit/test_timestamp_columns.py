"""`parse_column` (the batch fast path's timestamps) against its definition, `parse_within`
value by value, and proof that plain columns are converted column-wise."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.validation.timestamps as timestamps
from gateway.validation.timestamps import MS_FROM, NS_FROM, US_FROM, parse_column, parse_within

NOW = 1_700_000_000_000_000_000
SECONDS = NOW // 10**9
BOUNDS = [MS_FROM, US_FROM, NS_FROM]
WINDOWS = [(NOW - 10**9, NOW + 10**9), (-(2**70), 2**70), (NOW, NOW)]

INTS = st.one_of(
    st.sampled_from([SECONDS, NOW // 10**6, NOW // 10**3, NOW, 0, -1, -SECONDS, -(NOW // 10**6)]),
    st.sampled_from(BOUNDS).flatmap(lambda b: st.integers(b - 2, b + 1)),
    st.integers(SECONDS - 5, SECONDS + 5),
    st.integers(NOW // 10**6 - 2_000, NOW // 10**6 + 2_000),
    st.integers(-(2**66), 2**66),
)
FLOATS = st.one_of(
    st.sampled_from([SECONDS + 0.5, SECONDS - 0.25, NOW / 1e6, NOW / 1e3, float(NOW), 1e11, 1e14, 1e17]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(SECONDS - 2.0, SECONDS + 2.0),
)
TEXTS = st.one_of(
    st.sampled_from(
        [
            "2023-11-14T22:13:20Z",
            "2023-11-14t22:13:20.5z",
            "2023-11-14T22:13:20.123456+00:00",
            "2023-11-14T22:13:20.1234567Z",  # beyond microseconds
            "2023-11-14T22:13:20,25Z",
            "2023-11-14T23:13:20+01:00",
            "2023-11-14T22:13:20",  # no offset
            "20231114T221320Z",
            "2023-11-14",
            "not a time",
            "",
        ]
    ),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.text(max_size=12),
)
OTHERS = st.sampled_from([True, False, None, [], {}])
COLUMNS = st.one_of(
    st.lists(INTS, min_size=1, max_size=6),
    st.lists(FLOATS, min_size=1, max_size=6),
    st.lists(TEXTS, min_size=1, max_size=6),
    st.lists(st.one_of(INTS, FLOATS, TEXTS, OTHERS), min_size=1, max_size=6),
)


def by_definition(values: list[object], earliest: int, latest: int) -> list[int] | None:
    times = [parse_within(value, earliest, latest) for value in values]
    return None if None in times else times  # type: ignore[return-value]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(COLUMNS, st.sampled_from(WINDOWS))
def test_a_column_converts_as_value_by_value(values: list[object], window: tuple[int, int]) -> None:
    assert parse_column(values, *window) == by_definition(values, *window)


@pytest.mark.parametrize(
    "values",
    [
        [SECONDS, SECONDS - 1],
        [NOW // 10**6, NOW // 10**6 + 1],
        [NOW // 10**3, NOW // 10**3 - 7],
        [NOW, NOW - 1],
        [SECONDS + 0.5, float(SECONDS)],
        ["2023-11-14T22:13:20Z", "2023-11-14T22:13:20.999999+00:00", "2023-11-14t23:13:20,5+01:00"],
    ],
    ids=["s", "ms", "us", "ns", "float", "rfc3339"],
)
def test_plain_columns_are_converted_column_wise(values: list[object], monkeypatch: pytest.MonkeyPatch) -> None:
    expected = by_definition(values, NOW - 10**10, NOW + 10**10)
    assert expected is not None

    def refuse(*_: object) -> None:
        raise AssertionError("converted value by value")

    monkeypatch.setattr(timestamps, "parse_within", refuse)
    assert parse_column(values, NOW - 10**10, NOW + 10**10) == expected


@pytest.mark.parametrize(
    "values",
    [
        [NOW // 10**6, SECONDS],  # two units
        [-1, 1],  # a negative one
        ["2023-11-14T22:13:20.1234567Z"],  # nanosecond digits
        [SECONDS, float(SECONDS)],  # two types
        [math.nan],
    ],
)
def test_other_columns_still_equal_the_definition(values: list[object]) -> None:
    assert parse_column(values, -(2**70), 2**70) == by_definition(values, -(2**70), 2**70)


EDGES = [-MS_FROM, -1, 0, 1, MS_FROM - 1, MS_FROM, US_FROM - 1, US_FROM, NS_FROM - 1, NS_FROM, 2**63]


@pytest.mark.parametrize("low", EDGES)
@pytest.mark.parametrize("high", EDGES)
def test_integer_columns_at_the_unit_bounds(low: int, high: int) -> None:
    """Every pair of values at or next to a unit bound: one unit, or value by value."""
    for values in ([low], [high], [low, high], [high, low, high]):
        assert parse_column(values, -(2**80), 2**80) == by_definition(values, -(2**80), 2**80)
