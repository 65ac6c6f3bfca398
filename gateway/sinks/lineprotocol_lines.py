"""Line protocol for many items at once: `encode_lines` (what sinks use) and `encode_batch`.

`encode_lines` leaves out, with the reason, each item that cannot be encoded, including
text with lone surrogates (not UTF-8), and keeps the rest. Its output equals
`gateway.sinks.lineprotocol.encode_reading`'s line by line, whichever way a line was made:

* a run of at least `MIN_RUN` readings of one shape (measurement, tags, field keys in order,
  the exact type of every value; one device's batch, typically) is formatted in bulk: one
  `orjson.dumps` of all its values, one `%` format of all its lines;
* anything else, and a run with any doubt, is encoded reading by reading, which decides and
  words every refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import orjson

from gateway.core.message import INT64_MAX, INT64_MIN, Reading
from gateway.sinks.lineprotocol import (
    CACHE_LIMIT,
    DIVISOR,
    LineProtocolError,
    Precision,
    cached_head,
    encode_reading,
    field_prefix,
    field_set,
)

MIN_RUN = 4
"""Runs shorter than this are encoded reading by reading: bulk formatting does not pay for them."""

_PLAIN_KINDS = frozenset({float, int, bool, str})
_template_cache: dict[tuple[str, tuple[str, ...], tuple[type, ...]], tuple[str, tuple[int, ...]]] = {}


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

    Runs of plain readings (`_plain_run`) are formatted in a few C calls; anything else,
    and a run with any doubt, is encoded reading by reading.
    """
    chunks: list[str] = []
    good: list[int] = []
    rejected: dict[int, str] = {}
    divisor = DIVISOR[precision]
    start = single = 0  # items[single:start] wait to be encoded one by one
    n = len(items)
    while start < n:
        item, end = items[start], start + 1
        if end == n or type(item) is not Reading or getattr(items[end], "tags", None) != item.tags:
            start = end  # the common case of single readings of many devices, decided quickly
            continue
        end = _run_end(item, items, start)
        if end - start < MIN_RUN:
            start = end
            continue
        text = _plain_run(items, start, end, divisor)
        if text is None:
            start = end
            continue
        _encode_each(items, single, start, precision, chunks, good, rejected)
        chunks.append(text)
        good.extend(range(start, end))
        start = single = end
    _encode_each(items, single, n, precision, chunks, good, rejected)
    try:
        return "\n".join(chunks).encode("utf-8"), good, rejected
    except UnicodeEncodeError:
        return _encode_each_checked(items, precision)


def _run_end(first: Reading, items: Sequence[object], start: int) -> int:
    """The end of the run of readings from `start` with the measurement, tags and field keys
    (in order) of `first`, which is `items[start]`: `start + 1` at least."""
    measurement, tags, keys = first.measurement, first.tags, tuple(first.fields)
    end = start + 1
    for r in islice(items, end, None):
        if (
            type(r) is not Reading
            or (r.tags is not tags and r.tags != tags)  # one publish's readings share one tags dict
            or r.measurement != measurement
            or tuple(r.fields) != keys
        ):
            break
        end += 1
    return end


def _plain_run(items: Sequence[object], start: int, end: int, divisor: int) -> str | None:
    """The lines of the run `items[start:end]` (see `_run_end`), or None if it is not plain:
    then its readings are encoded one by one, which decides and words any refusal.

    A run is plain when every value has the exact type (float, int, bool or str) of the
    first reading's value of that field and every timestamp is an int. All its values are
    then formatted by one `orjson.dumps`, which spells them as line protocol does, except
    NaN and infinities (`null`), escapes (any backslash), commas in strings (splitting the
    text would miscount) and integers beyond int64: a run holding any of those is not plain.
    """
    first: Reading = items[start]  # type: ignore[assignment]  # see _run_end
    flat: list[object] = []
    for r in items[start:end]:
        flat += r.fields.values()  # type: ignore[attr-defined]
        flat.append(r.time_ns)  # type: ignore[attr-defined]
    width, rows = len(first.fields) + 1, end - start
    kinds = list(map(type, flat[:width]))
    if not first.fields or kinds[-1] is not int or not _PLAIN_KINDS.issuperset(kinds):
        return None
    if list(map(type, flat)) != kinds * rows:
        return None
    if divisor != 1:
        flat[width - 1 :: width] = [t // divisor for t in flat[width - 1 :: width]]  # type: ignore[operator]
    try:
        template, int_columns = _run_template(
            cached_head(first.measurement, first.tags), tuple(first.fields), tuple(kinds)
        )
        text = orjson.dumps(flat).decode()
    except (LineProtocolError, TypeError, AttributeError):
        return None
    tokens = text[1:-1].split(",")
    if len(tokens) != len(flat) or "\\" in text or "null" in text:
        return None
    for column in int_columns:
        values: list[int] = flat[column::width]  # type: ignore[assignment]
        if min(values) < INT64_MIN or max(values) > INT64_MAX:
            return None
    return "\n".join([template] * rows) % tuple(tokens)


def _run_template(head: str, keys: tuple[str, ...], kinds: tuple[type, ...]) -> tuple[str, tuple[int, ...]]:
    """The `%` template of one line of a plain run (`head key=%s,key2=%si %s`: `i` after
    integers) and the positions of its integer fields. Raises `LineProtocolError` for a bad key."""
    cache_key = (head, keys, kinds)
    cached = _template_cache.get(cache_key)
    if cached is not None:
        return cached
    suffixes = ["%si" if kind is int else "%s" for kind in kinds[:-1]]
    parts = [field_prefix(key).replace("%", "%%") + suffix for key, suffix in zip(keys, suffixes, strict=True)]
    template = f"{head.replace('%', '%%')} {','.join(parts)} %s"
    result = template, tuple(i for i, kind in enumerate(kinds[:-1]) if kind is int)
    if len(_template_cache) < CACHE_LIMIT:
        _template_cache[cache_key] = result
    return result


def _encode_each(
    items: Sequence[object],
    start: int,
    end: int,
    precision: Precision,
    lines: list[str],
    good: list[int],
    rejected: dict[int, str],
) -> None:
    """Encode `items[start:end]` one by one, appending to `lines`, `good` and `rejected`."""
    divisor = DIVISOR[precision]
    last_tags: object = None
    last_measurement = ""
    head = ""
    for i in range(start, end):
        item = items[i]
        try:  # the hot path: any doubt and encode_reading decides (and words the error)
            if type(item) is not Reading or not item.fields or type(item.time_ns) is not int:
                raise LineProtocolError
            tags = item.tags
            if tags != last_tags or item.measurement != last_measurement:
                head = cached_head(item.measurement, tags)
                last_tags, last_measurement = tags, item.measurement
            lines.append(f"{head}{field_set(item.fields)} {item.time_ns // divisor}")
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


def _encode_each_checked(items: Sequence[object], precision: Precision) -> tuple[bytes, list[int], dict[int, str]]:
    """`encode_lines` for items some of which hold text that is not UTF-8: one by one, each line checked."""
    lines: list[str] = []
    good: list[int] = []
    rejected: dict[int, str] = {}
    _encode_each(items, 0, len(items), precision, lines, good, rejected)
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
