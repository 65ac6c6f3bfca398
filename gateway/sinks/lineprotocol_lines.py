"""Line protocol for many items at once: `encode_lines` (what sinks use) and `encode_batch`.

`encode_lines` leaves out, with the reason, each item that cannot be encoded, including
text with lone surrogates (not UTF-8), and keeps the rest. Its output equals
`gateway.sinks.lineprotocol.encode_reading`'s line by line, whichever way a line was made:

* a run of at least `MIN_RUN` readings of one shape (measurement, tags, field keys in order,
  the exact type of every value; one device's batch, typically) is formatted in bulk: one
  `orjson.dumps` of all its values, one `%` format of all its lines;
* between such runs, when `MIN_LOOSE` readings or more lie there, at least `MIN_RUN` of
  them with the same field keys in order and values of the same types (single readings of
  many devices, typically) are formatted the same way, each line with its own head
  (measurement and tags), and keep their places;
* anything else, and readings with any doubt, are encoded reading by reading, which decides
  and words every refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from operator import add, attrgetter

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
MIN_LOOSE = 16
"""Fewer readings than this between runs are encoded reading by reading: grouping them by
field keys does not pay (measured: 10 single readings of 10 devices took 10 % longer)."""

_PLAIN_KINDS = frozenset({float, int, bool, str})
_TAGS = attrgetter("tags")
_MEASUREMENT = attrgetter("measurement")
_template_cache: dict[tuple[str, tuple[str, ...], tuple[type, ...]], str] = {}


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
        _encode_loose(items, single, start, precision, chunks, good, rejected)
        chunks.append(text)
        good.extend(range(start, end))
        start = single = end
    _encode_loose(items, single, n, precision, chunks, good, rejected)
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
    """The lines of the run `items[start:end]` (see `_run_end`), or None if it is not plain
    (see `_plain_tokens`): then its readings are encoded one by one, which words any refusal."""
    first: Reading = items[start]  # type: ignore[assignment]  # see _run_end
    plain = _plain_tokens(items[start:end], divisor)  # type: ignore[arg-type]
    if plain is None:
        return None
    try:
        template = _run_template(cached_head(first.measurement, first.tags), tuple(first.fields), plain[0])
    except (LineProtocolError, TypeError, AttributeError):
        return None
    return "\n".join([template] * (end - start)) % plain[1]


def _plain_lines(rows: list[Reading], divisor: int) -> list[str] | None:
    """The lines of readings with the same field keys in order but maybe other heads
    (measurement and tags), or None if they are not plain (see `_plain_tokens`)."""
    plain = _plain_tokens(rows, divisor)
    if plain is None:
        return None
    try:
        template = _run_template("", tuple(rows[0].fields), plain[0])  # ` key=%s,... %s`
        heads = list(map(cached_head, map(_MEASUREMENT, rows), map(_TAGS, rows)))
    except (LineProtocolError, TypeError, AttributeError):
        return None
    lines = ("\n".join([template] * len(rows)) % plain[1]).split("\n")
    return list(map(add, heads, lines)) if len(lines) == len(rows) else None


def _plain_tokens(rows: Sequence[Reading], divisor: int) -> tuple[tuple[type, ...], tuple[str, ...]] | None:
    """(the kinds of one row's values and timestamp, every value and timestamp as text) for
    readings with the same field keys in order, or None if they are not plain.

    They are plain when every value has the exact type (float, int, bool or str) of the
    first reading's value of that field and every timestamp is an int. All their values are
    then formatted by one `orjson.dumps`, which spells them as line protocol does, except
    NaN and infinities (`null`), escapes (any backslash), commas in strings (splitting the
    text would miscount) and integers beyond int64: readings holding any of those are not plain.
    """
    first = rows[0]
    flat: list[object] = []
    for r in rows:
        flat += r.fields.values()
        flat.append(r.time_ns)
    width = len(first.fields) + 1
    kinds = list(map(type, flat[:width]))
    if not first.fields or kinds[-1] is not int or not _PLAIN_KINDS.issuperset(kinds):
        return None
    if list(map(type, flat)) != kinds * len(rows):
        return None
    if divisor != 1:
        flat[width - 1 :: width] = [t // divisor for t in flat[width - 1 :: width]]  # type: ignore[operator]
    try:
        text = orjson.dumps(flat).decode()
    except TypeError:
        return None
    tokens = text[1:-1].split(",")
    if len(tokens) != len(flat) or "\\" in text or "null" in text:
        return None
    for column, kind in enumerate(kinds[:-1]):
        if kind is int:
            values: list[int] = flat[column::width]  # type: ignore[assignment]
            if min(values) < INT64_MIN or max(values) > INT64_MAX:
                return None
    return tuple(kinds), tuple(tokens)


def _run_template(head: str, keys: tuple[str, ...], kinds: tuple[type, ...]) -> str:
    """The `%` template of one line of plain readings (`head key=%s,key2=%si %s`: `i` after
    integers). Raises `LineProtocolError` for a bad key."""
    cache_key = (head, keys, kinds)
    cached = _template_cache.get(cache_key)
    if cached is not None:
        return cached
    suffixes = ["%si" if kind is int else "%s" for kind in kinds[:-1]]
    parts = [field_prefix(key).replace("%", "%%") + suffix for key, suffix in zip(keys, suffixes, strict=True)]
    template = f"{head.replace('%', '%%')} {','.join(parts)} %s"
    if len(_template_cache) < CACHE_LIMIT:
        _template_cache[cache_key] = template
    return template


def _encode_loose(
    items: Sequence[object],
    start: int,
    end: int,
    precision: Precision,
    lines: list[str],
    good: list[int],
    rejected: dict[int, str],
) -> None:
    """Encode `items[start:end]`, which holds no long run of one shape (single readings of
    many devices, typically), appending to `lines`, `good` and `rejected` in item order.

    Of `MIN_LOOSE` readings or more, those with the same field keys in order, at least
    `MIN_RUN` of them, are formatted together when plain (`_plain_lines`), each line with its
    own head; the others one by one."""
    if end - start < MIN_LOOSE:
        _encode_each(items, start, end, precision, lines, good, rejected)
        return
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in range(start, end):
        item = items[i]
        if type(item) is Reading and type(item.fields) is dict:
            key = tuple(item.fields)
            group = groups.get(key)
            if group is None:
                groups[key] = [i]
            else:
                group.append(i)
    made: dict[int, str] = {}
    divisor = DIVISOR[precision]
    for indices in groups.values():
        if len(indices) >= MIN_RUN:
            plain = _plain_lines([items[i] for i in indices], divisor)  # type: ignore[misc]
            if plain is not None:
                made.update(zip(indices, plain, strict=True))
    if not made:
        _encode_each(items, start, end, precision, lines, good, rejected)
        return
    single = start  # items[single:i] wait to be encoded one by one
    for i in sorted(made):
        if single < i:
            _encode_each(items, single, i, precision, lines, good, rejected)
        lines.append(made[i])
        good.append(i)
        single = i + 1
    _encode_each(items, single, end, precision, lines, good, rejected)


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
