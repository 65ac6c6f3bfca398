"""The compact byte form of bus message data, for durable bus backends.

`encode(data) -> bytes` and `decode(blob) -> data`. The first byte is a type tag, the rest
is orjson output:

* `R` + `[measurement, device_id, tags, fields, time_ns, received_ns]`: a `Reading`.
* `r` + the same plus a map of the fields JSON cannot carry (NaN, ±inf, integers beyond
  64 bits), written as text and restored on decode. Only such readings take this path.
* `C` + `[measurement, device_id, tags, received_ns, [fields, ...], [time_ns, ...]]`: a
  `ReadingBatch` whose readings share one tags dict (as the decoder makes them, see
  `gateway.validation.fastbatch`), measurement, device id and receive time, in one orjson
  call; decoded readings share one tags dict again.
* `B` + `[[measurement, device_id, tags, fields, time_ns, received_ns], ...]`: any other
  `ReadingBatch`, in one orjson call. `b` + the readings' own encodings (`R` or `r` each)
  joined by NUL bytes: a batch holding a field JSON cannot carry (orjson output never holds
  a raw NUL, so the cut is unambiguous).
* `D` + `[topic, reason, source, received_ns, client_id, attempts]` + a newline + the raw
  payload bytes: a `DeadLetter`. orjson never writes a raw newline, so the first one ends
  the JSON; the payload is kept byte for byte (no base64).
* `T` + `[name, json]`: a value of a type registered with `register` (the processors' event
  types), stored as the plain JSON its `to_json` returns and rebuilt by its `from_json`.
* `J` + JSON: any other value made only of None, bool, int (64-bit), finite float, str,
  list and dict with str keys.

Guarantee: `decode(encode(x)) == x`, with the same types, for every value `encode`
accepts (a `Reading`, or a non-empty `ReadingBatch` of them, whose tags and fields hold
what `gateway.core.message` says they hold, any `DeadLetter` whose text fields are valid
UTF-8, registered types whose converters round-trip, and the plain JSON values above).
Anything else (a tuple, a set, another dataclass, a string with lone surrogates, an
integer beyond 64 bits outside a reading's fields) raises `CodecError` instead of being
stored in an altered form.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from itertools import repeat
from typing import Any, cast

import orjson

from gateway.core.message import DeadLetter, Reading, ReadingBatch

_READING_FIELDS = operator.attrgetter("measurement", "device_id", "tags", "fields", "time_ns", "received_ns")
_SHARED = operator.attrgetter("measurement", "device_id", "received_ns")
_TAGS = operator.attrgetter("tags")
_FIELDS = operator.attrgetter("fields")
_TIME = operator.attrgetter("time_ns")
_READING = ord("R")
_READING_SPECIAL = ord("r")
_BATCH = ord("B")
_BATCH_SHARED = ord("C")
_BATCH_SPECIAL = ord("b")
_DEAD_LETTER = ord("D")
_JSON = ord("J")
_REGISTERED = ord("T")
_SLICE = 256
_to_json: dict[type, tuple[str, Callable[[Any], Any]]] = {}
_from_json: dict[str, Callable[[Any], Any]] = {}


class CodecError(ValueError):
    """The data cannot be stored exactly, or stored bytes are not a valid encoding."""


def register(kind: type, name: str, to_json: Callable[[Any], Any], from_json: Callable[[Any], Any]) -> None:
    """Make values of `kind` storable under the stable `name` (stored data outlives releases:
    never reuse a name for another layout). `from_json(to_json(x))` must equal `x`, and
    `to_json` must return plain JSON values (checked on every encode)."""
    if _from_json.get(name, from_json) is not from_json:
        raise ValueError(f"codec name {name!r} is already registered")
    _to_json[kind] = (name, to_json)
    _from_json[name] = from_json


def encode(data: object) -> bytes:
    """The stored form of `data`; raises CodecError for what would not round-trip."""
    kind = type(data)
    try:
        if kind is Reading:
            return _encode_reading(cast(Reading, data))
        if kind is ReadingBatch:
            return _encode_batch(cast(ReadingBatch, data))
        if kind is DeadLetter:
            d = cast(DeadLetter, data)
            if type(d.payload) is not bytes:
                raise CodecError(f"DeadLetter.payload must be bytes, not {type(d.payload).__name__}")
            head = orjson.dumps((d.topic, d.reason, d.source, d.received_ns, d.client_id, d.attempts))
            return b"D" + head + b"\n" + d.payload
        registered = _to_json.get(kind)
        if registered is not None:
            value = registered[1](data)
            _check_json(value)
            return b"T" + orjson.dumps((registered[0], value))
        _check_json(data)
        return b"J" + orjson.dumps(data)
    except TypeError as exc:  # orjson: unsupported type, lone surrogate, integer beyond 64 bits
        raise CodecError(f"cannot encode {kind.__name__}: {exc}") from None


def encode_many(items: list[object]) -> list[bytes]:
    """`[encode(x) for x in items]`, faster when all items are `Reading`s (the hot path)."""
    if len(items) > _SLICE:  # measured: per item, orjson costs 3-4x more on lists of thousands
        out: list[bytes] = []
        for start in range(0, len(items), _SLICE):
            out += _encode_slice(items[start : start + _SLICE])
        return out
    return _encode_slice(items)


def _encode_slice(items: list[object]) -> list[bytes]:
    if set(map(type, items)) == {Reading}:
        try:
            bodies = list(map(orjson.dumps, map(_READING_FIELDS, items)))
        except TypeError:  # an integer field beyond 64 bits: the general path handles it
            bodies = []
        # orjson writes NaN and infinities as null, which a Reading never holds otherwise;
        # bodies are JSON arrays, so "null" cannot straddle two of them
        if bodies and b"null" not in b"".join(bodies):
            return [b"R" + b for b in bodies]
    return [encode(d) for d in items]


def decode(blob: bytes) -> Any:
    """The value `encode` turned into `blob`; raises CodecError for bytes it did not write."""
    if not blob:
        raise CodecError("empty message data")
    tag = blob[0]
    try:
        if tag == _READING:  # the hot path: a copy of the body costs less than a memoryview
            t = orjson.loads(blob[1:])
            if type(t) is list:
                return Reading(*t)
            raise CodecError("stored reading is not a JSON array")
        if tag == _BATCH_SHARED:
            measurement, device, tags, received, fields, times = orjson.loads(blob[1:])
            if type(fields) is list and fields and type(times) is list and len(times) == len(fields):
                same = repeat(measurement), repeat(device), repeat(tags)  # map stops with `fields`
                return ReadingBatch(list(map(Reading, *same, fields, times, repeat(received))))
            raise CodecError("stored reading batch has no readings, or fields and times of unequal counts")
        if tag == _BATCH:
            rows = orjson.loads(blob[1:])
            if type(rows) is list and rows:
                return ReadingBatch([Reading(*t) for t in rows])
            raise CodecError("stored reading batch is not a non-empty JSON array")
        body = memoryview(blob)[1:]
        if tag == _DEAD_LETTER:
            cut = blob.index(b"\n")
            h = orjson.loads(body[: cut - 1])
            return DeadLetter(h[0], blob[cut + 1 :], h[1], h[2], h[3], h[4], h[5])
        if tag == _JSON:
            return orjson.loads(body)
        if tag == _REGISTERED:
            name, value = orjson.loads(body)
            from_json = _from_json.get(name)
            if from_json is None:
                raise CodecError(f"stored message data of unknown type {name!r}")
            return from_json(value)
        if tag == _READING_SPECIAL:
            t = orjson.loads(body)
            fields = t[3]
            for key, (kind, text) in t[6].items():
                fields[key] = float(text) if kind == "f" else int(text)
            return Reading(t[0], t[1], t[2], fields, t[4], t[5])
        if tag == _BATCH_SPECIAL:
            parts = [decode(part) for part in blob[1:].split(b"\0")]
            if all(type(p) is Reading for p in parts):
                return ReadingBatch(parts)
            raise CodecError("stored reading batch holds something other than readings")
    except (orjson.JSONDecodeError, ValueError, IndexError, TypeError, AttributeError, KeyError) as exc:
        raise CodecError(f"invalid stored message data: {exc}") from None
    raise CodecError(f"unknown type tag {tag!r} in stored message data")


def _encode_batch(batch: ReadingBatch) -> bytes:
    readings = batch.readings
    if not readings or set(map(type, readings)) != {Reading}:
        raise CodecError("a ReadingBatch must hold one or more Readings")
    first = readings[0]
    if len(set(map(_SHARED, readings))) == 1 and set(map(id, map(_TAGS, readings))) == {id(first.tags)}:
        shared = (first.measurement, first.device_id, first.tags, first.received_ns)
        try:
            out = orjson.dumps((*shared, list(map(_FIELDS, readings)), list(map(_TIME, readings))))
        except TypeError:
            out = b""
        if out and b"null" not in out:
            return b"C" + out
    try:
        out = orjson.dumps(list(map(_READING_FIELDS, readings)))
    except TypeError:
        out = b""  # maybe an integer field beyond 64 bits: the per-reading path decides
    if out and b"null" not in out:
        return b"B" + out
    return b"b" + b"\0".join(map(_encode_reading, readings))


def _encode_reading(r: Reading) -> bytes:
    try:
        out = orjson.dumps((r.measurement, r.device_id, r.tags, r.fields, r.time_ns, r.received_ns))
    except TypeError:
        out = b""  # maybe an integer field beyond 64 bits: the special path decides
    if out and b"null" not in out:
        return b"R" + out
    special: dict[str, tuple[str, str]] = {}
    fields: dict[str, Any] = {}
    for key, value in r.fields.items():
        if type(value) is float and not math.isfinite(value):
            special[key] = ("f", repr(value))
            fields[key] = None
        elif type(value) is int and not -(2**63) <= value < 2**64:
            special[key] = ("i", str(value))
            fields[key] = None
        elif value is None:
            raise CodecError(f"Reading field {key!r} is None")
        else:
            fields[key] = value
    if not special:
        if not out:  # the failure was elsewhere: let orjson say where
            orjson.dumps((r.measurement, r.device_id, r.tags, r.fields, r.time_ns, r.received_ns))
        if b"null" in out and any(v is None for v in r.tags.values()):
            raise CodecError("Reading tags hold None")
        return b"R" + out
    return b"r" + orjson.dumps((r.measurement, r.device_id, r.tags, fields, r.time_ns, r.received_ns, special))


def _check_json(value: object) -> None:
    """Raise CodecError unless `value` is plain JSON that decodes to an equal value of the same types."""
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return
    if kind is float:
        if not math.isfinite(cast(float, value)):
            raise CodecError(f"non-finite float {value!r} would not round-trip")
        return
    if kind is list:
        for item in cast(list[object], value):
            _check_json(item)
        return
    if kind is dict:
        for key, item in cast(dict[object, object], value).items():
            if type(key) is not str:
                raise CodecError(f"dict key {key!r} is not a str")
            _check_json(item)
        return
    raise CodecError(f"{kind.__name__} cannot be stored exactly (Reading, DeadLetter or plain JSON values only)")
