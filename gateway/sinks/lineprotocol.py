"""InfluxDB line protocol: a fast, strict encoder for `Reading` and a parser of the same grammar.

Encoding guarantees (checked against the InfluxDB 2.x/3.x and VictoriaMetrics parsers):

* measurement: `,`, space and `\\` are escaped; tag keys, tag values and field keys: `,`,
  `=`, space and `\\`; string field values: `"` and `\\`. Escaping backslashes as `\\\\` is
  what makes names ending in a backslash, or holding `\\,`, round-trip.
* tags are sorted by key; tags with an empty value are omitted (InfluxDB rejects them).
* integers end in `i` and must fit in int64; bools are `true`/`false`; floats use `repr()`
  (`1.0`, `1e+20`, `-0.0`), which round-trips exactly.
* the timestamp is `Reading.time_ns`, converted to the requested precision by floor division.

Refused with `LineProtocolError` (a `ValueError` naming the part): a newline or carriage
return anywhere, an empty measurement / tag key / field key, a measurement starting with
`#` (a comment line), no fields, NaN or infinite floats, integers outside int64, and field
values of other types. Not checked: InfluxDB's naming conventions (keys starting with `_`,
a field named `time`); the server decides about those.

`encode_lines` (what sinks use) leaves out, with the reason, each item that cannot be
encoded, including text with lone surrogates (not UTF-8), and keeps the rest. Its output
equals `encode_reading`'s line by line (readings in a row with equal tags share one head).
`gateway.sinks.lineprotocol_parse.parse_line` reads the grammar back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

from gateway.core.message import INT64_MAX, INT64_MIN, FieldValue, Reading

Precision = Literal["ns", "us", "ms", "s"]

_DIVISOR: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

_MEASUREMENT_TABLE = str.maketrans({",": "\\,", " ": "\\ ", "\\": "\\\\"})
_KEY_TABLE = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "\\\\"})
_STRING_TABLE = str.maketrans({'"': '\\"', "\\": "\\\\"})
_MEASUREMENT_SPECIAL = re.compile(r"[, \\\n\r]")
_KEY_SPECIAL = re.compile(r"[,= \\\n\r]")
_STRING_SPECIAL = re.compile(r'["\\\n\r]')

# Escaped names are cached: measurements, tag keys/values and field keys repeat endlessly.
_CACHE_LIMIT = 50_000
_measurement_cache: dict[str, str] = {}
_key_cache: dict[str, str] = {}
_prefix_cache: dict[str, str] = {}
_head_cache: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}


class LineProtocolError(ValueError):
    """A reading that line protocol cannot represent; the message names the part."""


def _newline_check(value: str, part: str) -> None:
    if "\n" in value or "\r" in value:
        raise LineProtocolError(f"{part} {value!r} contains a newline, which line protocol cannot represent")


def _escape_measurement(name: str) -> str:
    cached = _measurement_cache.get(name)
    if cached is not None:
        return cached
    if not name:
        raise LineProtocolError("measurement is empty")
    if name[0] == "#":
        raise LineProtocolError(f"measurement {name!r} starts with '#', which line protocol reads as a comment")
    escaped = name
    if _MEASUREMENT_SPECIAL.search(name) is not None:
        _newline_check(name, "measurement")
        escaped = name.translate(_MEASUREMENT_TABLE)
    if len(_measurement_cache) < _CACHE_LIMIT:
        _measurement_cache[name] = escaped
    return escaped


def _escape_key(name: str, part: str, tag: str | None = None) -> str:
    """Escape a tag key, tag value or field key; `part` (and `tag`, for a tag value) name it in errors."""
    cached = _key_cache.get(name)
    if cached is not None:
        return cached
    label = part if tag is None else f"{part} of tag {tag!r}"
    if not name:
        raise LineProtocolError(f"{label} is empty")
    escaped = name
    if _KEY_SPECIAL.search(name) is not None:
        _newline_check(name, label)
        escaped = name.translate(_KEY_TABLE)
    if len(_key_cache) < _CACHE_LIMIT:
        _key_cache[name] = escaped
    return escaped


def _field_value(key: str, value: object) -> str:
    """The slow path of field formatting: every type, with the errors."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise LineProtocolError(f"field {key!r} = {value} does not fit in a 64-bit integer")
        return f"{int(value)}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"field {key!r} is {value!r}; line protocol has no NaN or infinity")
        return repr(float(value))
    if isinstance(value, str):
        text = str(value)
        if _STRING_SPECIAL.search(text) is not None:
            _newline_check(text, f"string value of field {key!r}")
            text = text.translate(_STRING_TABLE)
        return f'"{text}"'
    raise LineProtocolError(f"field {key!r} is of type {type(value).__name__}; expected float, int, bool or str")


def _head(measurement: str, tags: dict[str, str]) -> str:
    """`measurement,k=v,...` with sorted, escaped tags (empty values omitted)."""
    parts = [_escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value == "":
            continue
        parts.append(f",{_escape_key(key, 'tag key')}={_escape_key(value, 'value', key)}")
    return "".join(parts)


def _cached_head(measurement: str, tags: dict[str, str]) -> str:
    key = (measurement, tuple(tags.items()))
    head = _head_cache.get(key)
    if head is None:
        head = _head(measurement, tags)
        if len(_head_cache) < _CACHE_LIMIT:
            _head_cache[key] = head
    return head


def _field_set(fields: dict[str, FieldValue]) -> str:
    """` k=v,k2=v2` (with its leading space) for non-empty `fields`; raises `LineProtocolError`."""
    parts = []
    sep = " "
    for key, value in fields.items():
        prefix = _prefix_cache.get(key)
        if prefix is None:
            prefix = _escape_key(key, "field key") + "="
            if len(_prefix_cache) < _CACHE_LIMIT:
                _prefix_cache[key] = prefix
        if type(value) is float and value - value == 0.0:  # finite: inf - inf and nan - nan are nan
            parts.append(f"{sep}{prefix}{value!r}")
        elif type(value) is int and INT64_MIN <= value <= INT64_MAX:
            parts.append(f"{sep}{prefix}{value}i")
        else:
            parts.append(sep + prefix + _field_value(key, value))
        sep = ","
    return "".join(parts)


def encode_reading(r: Reading, precision: Precision = "ns") -> str:
    """One line (without a trailing newline) for `r`; raises `LineProtocolError`."""
    try:
        head = _cached_head(r.measurement, r.tags)
        if not r.fields:
            raise LineProtocolError(f"reading of measurement {r.measurement!r} has no fields")
        field_set = _field_set(r.fields)
        ts = r.time_ns if precision == "ns" else r.time_ns // _DIVISOR[precision]
        if type(ts) is not int:
            raise LineProtocolError(f"time_ns {r.time_ns!r} is not an integer")
    except (TypeError, AttributeError) as exc:
        raise LineProtocolError(f"reading cannot be encoded: {exc}") from exc
    return f"{head}{field_set} {ts}"


def encode_batch(readings: Sequence[Reading], precision: Precision = "ns") -> bytes:
    """All readings, newline-joined, UTF-8. Raises `LineProtocolError` for the first
    unencodable reading (`encode_lines` leaves them out one by one instead)."""
    body, _, rejected = encode_lines(readings, precision)
    if rejected:
        raise LineProtocolError(f"reading {min(rejected)}: {rejected[min(rejected)]}")
    return body


def encode_lines(items: Sequence[object], precision: Precision = "ns") -> tuple[bytes, list[int], dict[int, str]]:
    """Encode what can be encoded: (body, indices of the items in it, {index: reason}).

    Items that are not `Reading`s, raise `LineProtocolError`, or hold text that is not
    valid UTF-8 (lone surrogates) are left out with the reason; the body holds the others in
    order. Every index appears exactly once in the two collections.
    """
    lines: list[str] = []
    good: list[int] = []
    rejected: dict[int, str] = {}
    divisor = _DIVISOR[precision]
    last_tags: object = None
    last_measurement = ""
    head = ""
    for i, item in enumerate(items):
        try:  # the hot path: any doubt and encode_reading decides (and words the error)
            if type(item) is not Reading or not item.fields or type(item.time_ns) is not int:
                raise LineProtocolError
            tags = item.tags
            if tags != last_tags or item.measurement != last_measurement:
                head = _cached_head(item.measurement, tags)
                last_tags, last_measurement = tags, item.measurement
            lines.append(f"{head}{_field_set(item.fields)} {item.time_ns // divisor}")
            good.append(i)
            continue
        except (LineProtocolError, TypeError, AttributeError, ValueError):
            last_tags = None
        if not isinstance(item, Reading):
            rejected[i] = f"not a Reading but a {type(item).__name__}"
            continue
        try:
            lines.append(encode_reading(item, precision))
        except LineProtocolError as exc:
            rejected[i] = f"line protocol: {exc}"
        else:
            good.append(i)
    try:
        return "\n".join(lines).encode("utf-8"), good, rejected
    except UnicodeEncodeError:
        kept: list[bytes] = []
        kept_indices: list[int] = []
        for i, line in zip(good, lines, strict=True):
            try:
                kept.append(line.encode("utf-8"))
            except UnicodeEncodeError as exc:
                rejected[i] = f"line protocol: text {line[exc.start : exc.end]!r} in {line[:80]!r} is not valid UTF-8"
            else:
                kept_indices.append(i)
        return b"\n".join(kept), kept_indices, rejected
