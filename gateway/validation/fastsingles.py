"""The decoder's fast path for many messages of one reading each, at once.

Devices mostly publish one JSON object per message, on a topic of their own. A singles
reader (`make_singles_reader`, one per schema) takes the parsed objects of several such
messages, each with its topic's base tags and `{device_id}` placeholder (see `TopicPlan`)
and its receive time, and returns either exactly the readings that the per-element fast
path (`gateway.validation.fastpath`) makes of them, one per message in order, equal in every
attribute, or None when any of them is not plainly valid; the decoder then decodes the
messages one by one, which finds and words what is wrong. So it may be more cautious than
the per-message path, never more permissive.

How it stays equal: values are checked by one call of `CompiledSchema.validate_value_list`;
known keys, device ids, tag fields, timestamps and clock skew are checked a column at a
time, by C-level passes, as `gateway.validation.fastbatch` does for one array. What differs
from a batch is that base tags, placeholder device and receive time vary per message.
Messages whose topics disagree on having a `{device_id}` placeholder take the per-message way.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from operator import le, methodcaller, or_, sub
from typing import Any

from gateway.core.message import Reading
from gateway.ingress.topics import DEVICE_ID_TAG
from gateway.validation.fastbatch import MISSING, ColumnRules, tag_column, tags_of
from gateway.validation.schema import CompiledSchema
from gateway.validation.timestamps import parse_column, parse_within

SinglesReader = Callable[
    [list[Any], list[int], int, int, list[dict[str, str]], list["str | None"]], "list[Reading] | None"
]


def make_singles_reader(schema: CompiledSchema) -> SinglesReader:
    """The fast path for messages of one `schema`'s elements, one element per message."""
    rules = ColumnRules.of(schema)
    measurement, get_device, get_stamp = rules.measurement, rules.get_device, rules.get_stamp
    base_getters = [methodcaller("get", name) for name in schema.tag_names]

    def read_singles(
        elements: list[Any],
        received: list[int],
        past_ns: int,
        future_ns: int,
        bases: list[dict[str, str]],
        topic_devices: list[str | None],
    ) -> list[Reading] | None:
        """Readings of `elements` (element i received at `received[i]` on a topic with base
        tags `bases[i]` and placeholder device `topic_devices[i]`; timestamps allowed from
        `past_ns` before to `future_ns` after the receive time), or None."""
        n = len(elements)
        fields = rules.fields(elements)
        if fields is None:
            return None
        devices = _devices(list(map(get_device, elements)), topic_devices)
        if devices is None:
            return None
        columns = []
        for (get, required), in_base in zip(rules.tag_getters, base_getters, strict=True):
            column = tag_column(get, required, elements)
            if column is None or not _agree(column, list(map(in_base, bases))):
                return None
            columns.append(column)
        tags = _tags(bases, rules.tag_names, columns, devices, topic_devices[0] is None)
        times = _times(list(map(get_stamp, elements)), received, past_ns, future_ns)
        if times is None:
            return None
        return list(map(Reading, repeat(measurement, n), devices, tags, fields, times, received))

    return read_singles


def _devices(found: list[Any], topic_devices: list[str | None]) -> list[str] | None:
    """Each element's device id by the per-element rules, or None if one breaks them."""
    if "" in found:
        return None
    n = len(found)
    if topic_devices.count(None) == n:  # no placeholder: the payload names the device
        return found if set(map(type, found)) == {str} else None
    if None in topic_devices:
        return None
    named: list[str] = topic_devices  # type: ignore[assignment]  # no None in it
    if found == named or found.count(MISSING) == n:
        return named
    if all(device is MISSING or device == topic for device, topic in zip(found, named, strict=True)):
        return named
    return None


def _agree(column: list[Any], known: list[str | None]) -> bool:
    """Whether each tag field value is absent or the one its topic's base tags give, if any."""
    if known.count(None) == len(known) or column == known:
        return True
    return all(value is MISSING or tag is None or value == tag for value, tag in zip(column, known, strict=True))


def _tags(
    bases: list[dict[str, str]], names: tuple[str, ...], columns: list[list[Any]], devices: list[str], device_tag: bool
) -> list[dict[str, str]]:
    """Each element's tags in the per-element path's order: its base tags, then tag fields in
    schema order, then the device id when no placeholder gave it (a tag field's value agrees
    with its base's, if any: `_agree`; `|` keeps the base's place for it)."""
    if any(MISSING in column for column in columns):  # an optional tag field absent somewhere
        rows = zip(*columns, devices, strict=True)
        return [tags_of(base, names, row, device_tag) for base, row in zip(bases, rows, strict=True)]
    keys = (*names, DEVICE_ID_TAG) if device_tag else names
    if not keys:
        return list(map(dict.copy, bases))
    rows = zip(*columns, devices, strict=True) if device_tag else zip(*columns, strict=True)
    return list(map(or_, bases, map(dict, map(zip, repeat(keys), rows))))


def _times(stamps: list[Any], received: list[int], past_ns: int, future_ns: int) -> list[int] | None:
    """Epoch ns per stamp (missing: the receive time), or None if one is refused or out of skew."""
    earliest = list(map(sub, received, repeat(past_ns)))
    latest = list(map(sub, received, repeat(-future_ns)))
    if MISSING in stamps:
        times = []
        for stamp, at, low, high in zip(stamps, received, earliest, latest, strict=True):
            time_ns = at if stamp is MISSING else parse_within(stamp, low, high)
            if time_ns is None:
                return None
            times.append(time_ns)
        return times
    column = parse_column(stamps, min(earliest), max(latest))  # refusals; then each its own skew
    if column is None or not all(map(le, earliest, column)) or not all(map(le, column, latest)):
        return None
    return column
