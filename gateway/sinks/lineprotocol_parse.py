"""A parser of the line protocol that `gateway.sinks.lineprotocol` writes.

`parse_line` accepts exactly the encoder's grammar: `parse_line(encode_reading(r))` gives
back the reading's parts. Used by tests and tools to check what was sent; never on the hot path.
"""

from __future__ import annotations

import math
import re

from gateway.core.message import INT64_MAX, INT64_MIN, FieldValue
from gateway.sinks.lineprotocol import LineProtocolError


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
    """Parse one line of the encoder's grammar: (measurement, tags, fields, timestamp).

    Strict: any deviation (unknown escape, missing timestamp, duplicate key, empty tag value,
    NaN, other boolean spellings, unsigned `u` integers) raises `LineProtocolError`.
    """
    if "\n" in line or "\r" in line:
        raise LineProtocolError("a line cannot contain a newline")
    measurement, i = _scan(line, 0, ", ", ", \\", "measurement")
    if not measurement or measurement[0] == "#":
        raise LineProtocolError(f"bad measurement {measurement!r}")
    tags: dict[str, str] = {}
    while i < len(line) and line[i] == ",":
        key, i = _scan(line, i + 1, ",= ", ",= \\", "tag key")
        _expect(line, i, "=", "tag key")
        value, i = _scan(line, i + 1, ",= ", ",= \\", "tag value")
        if not key or not value or key in tags:
            raise LineProtocolError(f"bad tag {key!r}={value!r}")
        tags[key] = value
    _expect(line, i, " ", "tag set")
    fields: dict[str, FieldValue] = {}
    while True:
        key, i = _scan(line, i + 1, ",= ", ",= \\", "field key")
        _expect(line, i, "=", "field key")
        if not key or key in fields:
            raise LineProtocolError(f"bad field key {key!r}")
        fields[key], i = _field(line, i + 1, key)
        if i < len(line) and line[i] == ",":
            continue
        _expect(line, i, " ", "field set")
        break
    stamp = line[i + 1 :]
    if not re.fullmatch(r"-?[0-9]+", stamp):
        raise LineProtocolError(f"bad timestamp {stamp!r}")
    return measurement, tags, fields, int(stamp)


def _expect(line: str, i: int, char: str, after: str) -> None:
    if i >= len(line) or line[i] != char:
        found = repr(line[i]) if i < len(line) else "end of line"
        raise LineProtocolError(f"expected {char!r} after {after} at column {i}, found {found}")


def _scan(line: str, i: int, stops: str, escapable: str, part: str) -> tuple[str, int]:
    out: list[str] = []
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            if i + 1 < n and line[i + 1] in escapable:
                out.append(line[i + 1])
                i += 2
                continue
            raise LineProtocolError(f"{part}: invalid escape at column {i}")
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT = re.compile(r"-?[0-9]+i")


def _field(line: str, i: int, key: str) -> tuple[FieldValue, int]:
    if i < len(line) and line[i] == '"':
        value, i = _scan(line, i + 1, '"', '"\\', f"string value of field {key!r}")
        _expect(line, i, '"', f"string value of field {key!r}")
        return value, i + 1
    end = i
    while end < len(line) and line[end] not in ", ":
        end += 1
    token = line[i:end]
    if token == "true":
        return True, end
    if token == "false":
        return False, end
    if _INT.fullmatch(token):
        number = int(token[:-1])
        if not INT64_MIN <= number <= INT64_MAX:
            raise LineProtocolError(f"field {key!r}: integer {token} out of range")
        return number, end
    if _FLOAT.fullmatch(token):
        value_f = float(token)
        if math.isfinite(value_f):
            return value_f, end
    raise LineProtocolError(f"field {key!r}: bad value {token!r}")
