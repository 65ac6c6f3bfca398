"""InfluxDB line protocol: a fast, strict encoder for `Reading` and a parser of the same grammar.

Encoding guarantees (checked against the InfluxDB 2.x/3.x and VictoriaMetrics parsers):

* measurement: `,`, space and `\\` are escaped; tag keys, tag values and field keys: `,`,
  `=`, space and `\\`; string field values: `"` and `\\`. Escaping backslashes as `\\\\` is
  what makes names ending in a backslash, or holding `\\,`, round-trip.
* tags are sorted by key; tags with an empty value are omitted (InfluxDB rejects them).
* integers end in `i` and must fit in int64; bools are `true`/`false`; floats are spelled
  as orjson spells them: the shortest text that reads back to the same bits (`1.0`,
  `-0.0`, `1e+20`, `1.5e-7`, `0.00001`; every InfluxDB and VictoriaMetrics parser reads
  these forms). orjson formats a float several times faster than `repr()`.
* the timestamp is `Reading.time_ns`, converted to the requested precision by floor division.

Refused with `LineProtocolError` (a `ValueError` naming the part): a newline or carriage
return anywhere, an empty measurement / tag key / field key, a measurement starting with
`#` (a comment line), no fields, NaN or infinite floats, integers outside int64, and field
values of other types. Not checked: InfluxDB's naming conventions (keys starting with `_`,
a field named `time`); the server decides about those.

`gateway.sinks.lineprotocol_lines.encode_lines` (what sinks use) encodes many items at once,
with output equal to `encode_reading`'s line by line.
`gateway.sinks.lineprotocol_parse.parse_line` reads the grammar back.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import orjson

from gateway.core.message import INT64_MAX, INT64_MIN, FieldValue, Reading

Precision = Literal["ns", "us", "ms", "s"]

DIVISOR: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

_MEASUREMENT_TABLE = str.maketrans({",": "\\,", " ": "\\ ", "\\": "\\\\"})
_KEY_TABLE = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "\\\\"})
_STRING_TABLE = str.maketrans({'"': '\\"', "\\": "\\\\"})
_MEASUREMENT_SPECIAL = re.compile(r"[, \\\n\r]")
_KEY_SPECIAL = re.compile(r"[,= \\\n\r]")
_STRING_SPECIAL = re.compile(r'["\\\n\r]')

# Escaped names are cached: measurements, tag keys/values and field keys repeat endlessly.
CACHE_LIMIT = 50_000
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
    if len(_measurement_cache) < CACHE_LIMIT:
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
    if len(_key_cache) < CACHE_LIMIT:
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
        return orjson.dumps(float(value)).decode()  # see the module docstring: floats as orjson spells them
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


def cached_head(measurement: str, tags: dict[str, str]) -> str:
    key = (measurement, tuple(tags.items()))
    head = _head_cache.get(key)
    if head is None:
        head = _head(measurement, tags)
        if len(_head_cache) < CACHE_LIMIT:
            _head_cache[key] = head
    return head


def field_prefix(key: str) -> str:
    """`key=` for a field key, escaped; raises `LineProtocolError` for an empty key or a newline."""
    prefix = _prefix_cache.get(key)
    if prefix is None:
        prefix = _escape_key(key, "field key") + "="
        if len(_prefix_cache) < CACHE_LIMIT:
            _prefix_cache[key] = prefix
    return prefix


def field_set(fields: dict[str, FieldValue]) -> str:
    """` k=v,k2=v2` (with its leading space) for non-empty `fields`; raises `LineProtocolError`."""
    parts = []
    sep = " "
    for key, value in fields.items():
        prefix = _prefix_cache.get(key) or field_prefix(key)
        if type(value) is float and value - value == 0.0:  # finite: inf - inf and nan - nan are nan
            parts.append(f"{sep}{prefix}{orjson.dumps(value).decode()}")
        elif type(value) is int and INT64_MIN <= value <= INT64_MAX:
            parts.append(f"{sep}{prefix}{value}i")
        else:
            parts.append(sep + prefix + _field_value(key, value))
        sep = ","
    return "".join(parts)


def encode_reading(r: Reading, precision: Precision = "ns") -> str:
    """One line (without a trailing newline) for `r`; raises `LineProtocolError`."""
    try:
        head = cached_head(r.measurement, r.tags)
        if not r.fields:
            raise LineProtocolError(f"reading of measurement {r.measurement!r} has no fields")
        fields = field_set(r.fields)
        ts = r.time_ns if precision == "ns" else r.time_ns // DIVISOR[precision]
        if type(ts) is not int:
            raise LineProtocolError(f"time_ns {r.time_ns!r} is not an integer")
    except (TypeError, AttributeError) as exc:
        raise LineProtocolError(f"reading cannot be encoded: {exc}") from exc
    return f"{head}{fields} {ts}"
