"""The stored form of readings for the SQLite store (`gateway.sinks.sqlite_store`): one JSON
array of rows `[measurement, tags, time_ns, device_id, fields]`, the parameter of its INSERT.

`tags` is canonical JSON text (keys sorted); `fields` a JSON object. A reading that cannot be
stored is left out with the reason: not a `Reading`, no fields, an empty or non-text field
name, NaN/infinite float, integer outside int64, a value of another type, non-text tags,
text that is not valid UTF-8.

`encode_rows` first tries a fast path over the whole batch (exact types, cached tag texts,
orjson over the whole batch) that gives the very bytes of the checked path, which runs item
by item and words the refusals whenever the fast path has any doubt: a NaN or infinity,
a field integer beyond 53 bits, text that is not UTF-8, anything not of an exact type.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from gateway.core.message import INT64_MAX, INT64_MIN, FieldValue, Reading

_SCALARS = frozenset((float, int, bool, str))
_TAGS_CACHE_LIMIT = 50_000
Point = tuple[str, str, int, str, dict[str, FieldValue]]
_tags_text: dict[tuple[tuple[str, str], ...], str] = {}


def _fast_body(items: list[Any]) -> bytes | None:
    """The `_INSERT` parameter for `items` when every one is plainly storable (a `Reading` of
    exact str / int / float / bool types that orjson writes as `_point` would), else None: then
    `_point` checks item by item and words the refusals. Equal to the checked path's body."""
    rows: list[Point] = []
    for item in items:
        if type(item) is not Reading:
            return None
        measurement, device, tags, fields = item.measurement, item.device_id, item.tags, item.fields
        if type(measurement) is not str or not measurement or type(device) is not str:
            return None
        if type(item.time_ns) is not int or not INT64_MIN <= item.time_ns <= INT64_MAX:
            return None
        if not fields or "" in fields or not _SCALARS.issuperset(map(type, fields.values())):
            return None
        key = tuple(tags.items())
        text = _tags_text.get(key)
        if text is None:
            if not all(type(k) is str and type(v) is str for k, v in key):
                return None
            try:
                text = orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode()
            except orjson.JSONEncodeError:
                return None
            if len(_tags_text) < _TAGS_CACHE_LIMIT:
                _tags_text[key] = text
        rows.append((measurement, text, item.time_ns, device, fields))
    try:
        # Field integers beyond 53 bits raise here (those beyond int64 must be refused, and the
        # checked path tells them apart); text that is not UTF-8 raises in either call.
        orjson.dumps([row[4] for row in rows], option=orjson.OPT_STRICT_INTEGER)
        body = orjson.dumps(rows)
    except orjson.JSONEncodeError:
        return None
    return None if b"null" in body else body  # NaN and infinity are written as null


def _point(item: object) -> Point:
    """The stored form of one reading; raises ValueError/TypeError naming what cannot be stored."""
    if not isinstance(item, Reading):
        raise TypeError(f"not a Reading but a {type(item).__name__}")
    if not isinstance(item.measurement, str) or not item.measurement:
        raise ValueError(f"measurement {item.measurement!r} is not a non-empty string")
    if type(item.time_ns) is not int or not INT64_MIN <= item.time_ns <= INT64_MAX:
        raise ValueError(f"time_ns {item.time_ns!r} is not a 64-bit integer")
    if not isinstance(item.device_id, str):
        raise ValueError(f"device_id {item.device_id!r} is not a string")
    _check_utf8(item.measurement, "measurement")
    _check_utf8(item.device_id, "device_id")
    for key, tag in item.tags.items():
        if not isinstance(key, str) or not isinstance(tag, str):
            raise ValueError(f"tag {key!r}={tag!r} is not text")
    if not item.fields:
        raise ValueError(f"reading of measurement {item.measurement!r} has no fields")
    tags = orjson.dumps(item.tags, option=orjson.OPT_SORT_KEYS).decode()
    fields: dict[str, FieldValue] = {}
    for name, value in item.fields.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"field name {name!r} is not a non-empty string")
        _check_utf8(name, "field name")
        fields[name] = _checked_value(name, value)
    return (item.measurement, tags, item.time_ns, item.device_id, fields)


def _check_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} is not valid UTF-8 text") from None


def _checked_value(name: str, value: object) -> FieldValue:
    """`value` as stored (JSON keeps bool, int, float and text apart); raises ValueError."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"field {name!r} = {value} does not fit in a 64-bit integer")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"field {name!r} is {value!r}; NaN and infinity cannot be stored")
        return float(value)
    if isinstance(value, str):
        _check_utf8(value, f"value of field {name!r}")
        return str(value)
    raise ValueError(f"field {name!r} has a value of type {type(value).__name__}; expected float, int, bool or str")


def encode_rows(items: list[Any]) -> tuple[bytes, list[int], dict[int, str]]:
    """(the INSERT parameter, indices of the items in it, {index: reason} for the others)."""
    body = _fast_body(items)
    if body is not None:
        return body, list(range(len(items))), {}
    return _checked_rows(items)


def _checked_rows(items: list[Any]) -> tuple[bytes, list[int], dict[int, str]]:
    """`encode_rows` item by item: the reference the fast path must equal."""
    rows: list[Point] = []
    good: list[int] = []
    rejected: dict[int, str] = {}
    for i, item in enumerate(items):
        try:
            rows.append(_point(item))
        except (ValueError, TypeError) as exc:
            rejected[i] = f"sqlite store cannot store this reading: {exc}"
        else:
            good.append(i)
    return orjson.dumps(rows), good, rejected
