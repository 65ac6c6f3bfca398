"""The decoder's fast path for a whole batch: a JSON array of plainly valid elements becomes
its readings with a few C-level passes over the array instead of Python work per element.

A batch reader (`make_batch_reader`, one per schema) returns for the elements of one array
either exactly the readings that the per-element fast path (`gateway.validation.fastpath`)
makes of them, element by element, equal in every attribute, or None when any element is
not plainly valid; the decoder then takes the per-element way, which finds and words what is
wrong. So it may be more cautious than the per-element path, never more permissive.

How it stays equal: values are checked by one call of `CompiledSchema.validate_value_list`
(the same pydantic annotations as `validate_values`, over the list); every other rule of
`fastpath.make_reader` (known keys, device id, tag fields, timestamp forms and clock skew)
is applied to a column at a time: `map` with `methodcaller("get", key)`, `count`, `min` and
`max` run in C. Readings of the batch that end up with equal tags share one tags dict
(as readings never change their tags, see `Reading`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, repeat
from operator import methodcaller
from typing import Any

from pydantic_core import ValidationError

from gateway.core.message import FieldValue, Reading
from gateway.ingress.topics import DEVICE_ID_TAG
from gateway.validation.schema import CompiledSchema
from gateway.validation.timestamps import parse_column, parse_within

MISSING: Any = object()  # what a getter gives for an absent key

BatchReader = Callable[[list[Any], int, int, int, dict[str, str], "str | None"], "list[Reading] | None"]


@dataclass(frozen=True, slots=True)
class ColumnRules:
    """A schema's per-element rules, bound once for the column-wise readers (batches here,
    singles in `gateway.validation.fastsingles`)."""

    measurement: str
    validate_all: Callable[[object], list[dict[str, FieldValue]]]
    allowed: frozenset[str] | None  # the keys an element may have; None: any
    get_device: Callable[[Any], Any]
    get_stamp: Callable[[Any], Any]
    tag_getters: list[tuple[Callable[[Any], Any], bool]]  # per tag field: its getter, whether required
    tag_names: tuple[str, ...]

    @classmethod
    def of(cls, schema: CompiledSchema) -> ColumnRules:
        return cls(
            schema.measurement,
            schema.validate_value_list,
            schema.known_keys if schema.rejects_unknown else None,
            methodcaller("get", schema.device_id_field, MISSING),
            methodcaller("get", schema.timestamp_field, MISSING),
            [(methodcaller("get", name, MISSING), name in schema.required_tags) for name in schema.tag_names],
            schema.tag_names,
        )

    def fields(self, elements: list[Any]) -> list[dict[str, FieldValue]] | None:
        """Each element's value fields (one pydantic call), or None if one is refused (or is not
        an object), has no value field, or has a key the schema does not know and refuses."""
        try:
            fields = self.validate_all(elements)
        except ValidationError:
            return None
        if not all(fields) or (self.allowed is not None and not self.allowed.issuperset(chain.from_iterable(elements))):
            return None
        return fields


def make_batch_reader(schema: CompiledSchema) -> BatchReader:
    """The batch fast path for arrays of `schema`'s elements (arguments as `TopicPlan.read`'s,
    with the array in place of the element)."""
    rules = ColumnRules.of(schema)
    measurement, get_device, get_stamp = rules.measurement, rules.get_device, rules.get_stamp
    tag_getters, tag_names = rules.tag_getters, rules.tag_names

    def read_many(
        elements: list[Any], received: int, earliest: int, latest: int, base: dict[str, str], topic_device: str | None
    ) -> list[Reading] | None:
        n = len(elements)
        fields = rules.fields(elements)
        if fields is None:
            return None

        devices = list(map(get_device, elements))
        if topic_device is None:
            if set(map(type, devices)) != {str} or "" in devices:
                return None
        elif devices.count(topic_device) + devices.count(MISSING) != n:
            return None
        else:
            devices = [topic_device] * n

        columns = []
        for (get, required), name in zip(tag_getters, tag_names, strict=True):
            column = tag_column(get, required, elements)
            if column is None:
                return None
            known = base.get(name)
            if known is not None and column.count(known) + column.count(MISSING) != n:
                return None
            columns.append(column)
        tags = _tags(base, tag_names, columns, devices, topic_device is None, n)

        stamps = list(map(get_stamp, elements))
        if MISSING in stamps:  # the receive time for those: value by value
            times = _times(stamps, received, earliest, latest)
        else:
            times = parse_column(stamps, earliest, latest)
        if times is None:
            return None
        return list(map(Reading, repeat(measurement, n), devices, tags, fields, times, repeat(received, n)))

    return read_many


def tag_column(get: Callable[[Any], Any], required: bool, elements: list[Any]) -> list[Any] | None:
    """One tag field's values (`MISSING` where absent), or None if one is not a non-empty
    string or a required one is absent (the per-element path's rule, on a column)."""
    column = list(map(get, elements))
    if (required and MISSING in column) or not set(map(type, column)) <= {str, object} or "" in column:
        return None
    return column


def _tags(
    base: dict[str, str],
    names: tuple[str, ...],
    columns: list[list[Any]],
    devices: list[str],
    device_tag: bool,
    n: int,
) -> list[dict[str, str]]:
    """Each element's tags, built in the per-element path's order (base tags, tag fields in
    schema order, then the device id when it is not a placeholder); one dict per distinct row."""
    rows: list[tuple[Any, ...]] = list(zip(*columns, devices, strict=True)) if names or device_tag else [()] * n
    if rows.count(rows[0]) == n:  # the common case: one device, one site
        return [tags_of(base, names, rows[0], device_tag)] * n
    made: dict[tuple[Any, ...], dict[str, str]] = {}
    out = []
    for row in rows:
        tags = made.get(row)
        if tags is None:
            tags = made[row] = tags_of(base, names, row, device_tag)
        out.append(tags)
    return out


def tags_of(base: dict[str, str], names: tuple[str, ...], row: tuple[Any, ...], device_tag: bool) -> dict[str, str]:
    tags = base.copy()
    for name, value in zip(names, row, strict=False):
        if value is not MISSING:
            tags.setdefault(name, value)
    if device_tag:
        tags[DEVICE_ID_TAG] = row[-1]
    return tags


def _times(stamps: list[Any], received: int, earliest: int, latest: int) -> list[int] | None:
    """Epoch ns per stamp (missing: the receive time), or None if one is refused or out of skew."""
    times = []
    for stamp in stamps:
        time_ns = received if stamp is MISSING else parse_within(stamp, earliest, latest)
        if time_ns is None:
            return None
        times.append(time_ns)
    return times
