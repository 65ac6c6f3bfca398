"""Payload timestamps to epoch nanoseconds.

Accepted forms:

* A JSON number (not a boolean) of epoch time; its unit is decided by magnitude:

  | absolute value        | unit          | covers (for positive values)        |
  |-----------------------|---------------|-------------------------------------|
  | below 1e11            | seconds       | up to year 5138                     |
  | 1e11 up to below 1e14 | milliseconds  | 1973-03-03 to year 5138             |
  | 1e14 up to below 1e17 | microseconds  | 1973-03-03 to year 5138             |
  | 1e17 and above        | nanoseconds   | 1973-03-03 on                       |

  So every plausible present-day time is read correctly in any of the four units; the
  cost is that millisecond times before March 1973 are read as seconds (and then
  refused by the skew check). Integers are converted exactly; fractional seconds keep
  about microsecond precision (the limit of a double near the present epoch).
* A string in RFC 3339 / ISO 8601 form as accepted by `datetime.fromisoformat` (Python
  3.11: `Z` suffix, basic and extended formats), with a UTC offset, which is required
  (a time without one is ambiguous and refused). Lowercase `t`/`z` are accepted.
  Fraction digits beyond microseconds are kept down to nanoseconds.

Anything else (booleans, null, objects, arrays, unparseable strings) is refused with a
ValueError whose message says why. Range checks (clock skew) are the caller's job.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import add, attrgetter, floordiv, mul, sub
from typing import cast

from gateway.validation.schema import json_kind

# Where integer epoch times change unit (see the table above): from MS_FROM on they are
# milliseconds, from US_FROM on microseconds, from NS_FROM on nanoseconds.
MS_FROM = 10**11
US_FROM = 10**14
NS_FROM = 10**17
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FRACTION = re.compile(r"[.,](\d+)")
_LONG_FRACTION = re.compile(r"[.,]\d{7}")  # fraction digits beyond microseconds
_MICROSECOND = timedelta(microseconds=1)
_tzinfo = attrgetter("tzinfo")
_MAX_TEXT = 64
_isfinite = math.isfinite


def parse_timestamp(value: object) -> int:
    """Epoch nanoseconds for a payload timestamp; ValueError with the reason otherwise."""
    # Exact JSON types first (the common case, one test each); subclasses take the general way.
    if type(value) is int:
        return _from_int(value)
    if type(value) is float and _isfinite(value):
        return _from_float(value)
    if type(value) is str:
        return _from_text(value)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected an epoch number or an RFC 3339 string, got {json_kind(value)}")
    if isinstance(value, int):
        return _from_int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return _from_float(value)
    if isinstance(value, str):
        return _from_text(value)
    raise ValueError(f"expected an epoch number or an RFC 3339 string, got {json_kind(value)}")


def parse_within(value: object, earliest: int, latest: int) -> int | None:
    """`parse_timestamp(value)` when it is from `earliest` to `latest` (inclusive), else None
    (also for a value it refuses): the fast paths' reading of a timestamp, whose refusals the
    detailed path words. Positive epoch milliseconds, the commonest form, take one test."""
    if type(value) is int and MS_FROM <= value < US_FROM:
        ns = value * 1_000_000
    else:
        try:
            ns = parse_timestamp(value)
        except ValueError:
            return None
    return ns if earliest <= ns <= latest else None


def parse_column(values: list[object], earliest: int, latest: int) -> list[int] | None:
    """`[parse_within(v, earliest, latest) for v in values]` when no value is refused, else
    None; for a column of one JSON type it takes a few C-level passes instead of Python
    work per value (the decoder's batch fast path). A column of integers in one unit, of
    finite floats, or of RFC 3339 texts with at most microsecond fractions is converted
    column-wise; any other column is converted value by value, with the same results."""
    kinds = set(map(type, values))
    times: list[int] | None = None
    if kinds == {int}:
        ints = cast("list[int]", values)
        factor = _unit_factor(min(ints), max(ints))
        if factor is not None:
            times = list(map(mul, ints, repeat(factor)))
    elif kinds == {str}:
        texts = cast("list[str]", values)
        if _LONG_FRACTION.search("\n".join(texts)) is None:
            try:
                moments = list(map(datetime.fromisoformat, map(str.upper, texts)))
            except ValueError:
                return None
            if None in map(_tzinfo, moments):  # no UTC offset (fromisoformat's offsets are fixed)
                return None
            deltas = map(sub, moments, repeat(_EPOCH))
            times = list(map(mul, map(floordiv, deltas, repeat(_MICROSECOND)), repeat(1_000)))
    elif kinds == {float}:
        floats = cast("list[float]", values)
        factor = _unit_factor(min(floats), max(floats)) if all(map(_isfinite, floats)) else None
        if factor is not None:  # _from_float's steps, a column at a time
            wholes = list(map(int, floats))
            parts = map(round, map(mul, map(sub, floats, wholes), repeat(factor)))
            times = list(map(add, map(mul, wholes, repeat(factor)), parts))
    if times is None:
        checked = []
        for value in values:
            time_ns = parse_within(value, earliest, latest)
            if time_ns is None:
                return None
            checked.append(time_ns)
        return checked
    return times if earliest <= min(times) and max(times) <= latest else None


def _unit_factor(low: float, high: float) -> int | None:
    """The factor to nanoseconds shared by epoch numbers from `low` to `high`; None when
    they are not all of one unit or some are negative (see `_from_int` and `_from_float`,
    whose bounds are the same)."""
    if low < 0:
        return None
    if high < MS_FROM:
        return 1_000_000_000
    if low < MS_FROM:
        return None
    if high < US_FROM:
        return 1_000_000
    if low < US_FROM:
        return None
    if high < NS_FROM:
        return 1_000
    return 1 if low >= NS_FROM else None


def _from_int(value: int) -> int:
    magnitude = abs(value)
    if magnitude < MS_FROM:
        return value * 1_000_000_000
    if magnitude < US_FROM:
        return value * 1_000_000
    if magnitude < NS_FROM:
        return value * 1_000
    return value


def _from_float(value: float) -> int:
    magnitude = abs(value)
    if magnitude < 1e11:
        factor = 1_000_000_000
    elif magnitude < 1e14:
        factor = 1_000_000
    elif magnitude < 1e17:
        factor = 1_000
    else:
        return int(value)
    whole = int(value)
    return whole * factor + round((value - whole) * factor)


def _from_text(text: str) -> int:
    shown = text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValueError(f"{shown!r} is not an RFC 3339 date-time") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{shown!r} has no UTC offset (add 'Z' or '+hh:mm')")
    delta = moment - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    fraction = _FRACTION.search(text)
    if fraction is not None and len(fraction.group(1)) > 6:
        ns += int(fraction.group(1)[6:9].ljust(3, "0"))
    return ns


def describe_offset(delta_ns: int) -> str:
    """A short human form of the size of a nanosecond difference, e.g. '3 days, 2:00:00'."""
    try:
        return str(timedelta(microseconds=abs(delta_ns) // 1_000))
    except OverflowError:
        return "more than 999999999 days"


def format_ns(ns: int) -> str:
    """An RFC 3339 UTC rendering of epoch nanoseconds, or the raw number if out of range."""
    try:
        return (_EPOCH + timedelta(microseconds=ns // 1_000)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return "a time outside years 1-9999"
