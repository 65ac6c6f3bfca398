"""The decoder's fast path: plainly valid elements become readings with little Python work.

A reader (`make_reader`, one per schema) returns for an element either the very `Reading`
that the detailed path (`Decoder._reading`: `CompiledSchema.check`, then device id, tags,
timestamp and skew, see `gateway.validation.decode`) makes of it, equal in every attribute
including the order of `fields` and `tags` and the types of values, or None when the element
is not plainly valid. On None the decoder runs the detailed path, which decides and words any
rejection. So the fast path may be more cautious than the detailed path, never more
permissive, and reject codes and reasons come from one place only.

How it stays equal: value fields are checked by `CompiledSchema.validate_values` (the same
pydantic annotations, over the value fields alone); tag fields, device id, tags and clock
skew repeat the detailed path's rules inline, with exact `type(...) is` tests (orjson makes
only exact `str`, `int`, `float`, ...; anything else takes the detailed way); timestamps
other than positive epoch milliseconds go through the same `parse_timestamp` (`parse_within`). A reader
raises only what `parse_timestamp` raises other than ValueError, which the detailed path
would raise too.

`TopicPlan` is what a topic's route match means for every message on it; the decoder keeps
one per recently seen topic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import ValidationError

from gateway.core.message import Reading
from gateway.ingress.topics import DEVICE_ID_TAG, RouteConfig
from gateway.validation.fastbatch import BatchReader
from gateway.validation.schema import CompiledSchema
from gateway.validation.timestamps import parse_within

_MISSING: Any = object()

Reader = Callable[[object, int, int, int, dict[str, str], "str | None"], "Reading | None"]


@dataclass(slots=True, frozen=True)
class TopicPlan:
    """A matched topic: its route, placeholder values and schema, and what follows from them.

    `tags` is the route's static tags updated with the placeholder values (the tags of every
    reading before tag fields; never changed, copied per reading); `device` is the
    `{device_id}` placeholder value, or None; `read` is the fast path of the route's schema
    and `read_many` its batch fast path (`gateway.validation.fastbatch`).
    An element's fast reading is `read(element, received_ns, earliest_ns, latest_ns, tags, device)`
    where `earliest_ns` / `latest_ns` are the receive time minus / plus the skew limits.
    """

    route: RouteConfig
    values: dict[str, str]
    schema: CompiledSchema
    read: Reader
    read_many: BatchReader
    tags: dict[str, str]
    device: str | None

    @classmethod
    def of(
        cls, route: RouteConfig, values: dict[str, str], schema: CompiledSchema, read: Reader, read_many: BatchReader
    ) -> TopicPlan:
        """The plan of a topic that matched `route` with placeholder `values`."""
        tags = {**route.tags, **values} if route.tags else dict(values)
        return cls(route, values, schema, read, read_many, tags, values.get(DEVICE_ID_TAG))


def make_reader(schema: CompiledSchema) -> Reader:
    """The fast path for the elements of `schema`.

    What does not change per element is bound once, as closure constants: cheaper than
    attribute lookups per element.
    """
    validate = schema.validate_values
    device_field = schema.device_id_field
    stamp_field = schema.timestamp_field
    tag_names = schema.tag_names
    required_tags = schema.required_tags
    measurement = schema.measurement
    # unknown_fields: reject -> the keys an element may have; ignore -> None (no check).
    allowed = schema.known_keys if schema.rejects_unknown else None

    def read(
        element: object, received: int, earliest: int, latest: int, base_tags: dict[str, str], topic_device: str | None
    ) -> Reading | None:
        """The reading of `element` (received at `received`, timestamps allowed from `earliest`
        to `latest` inclusive, on a topic with `base_tags` and device `topic_device`, see
        `TopicPlan`), or None: use the detailed path."""
        if type(element) is not dict:
            return None
        try:
            fields = validate(element)
        except ValidationError:
            return None
        if not fields or (allowed is not None and not allowed.issuperset(element)):
            return None
        get = element.get

        device = get(device_field, _MISSING)
        if device is _MISSING:
            if topic_device is None:
                return None
            device = topic_device
        elif type(device) is not str or not device or (topic_device is not None and device != topic_device):
            return None

        tags = base_tags.copy()
        for name in tag_names:
            value = get(name, _MISSING)
            if value is _MISSING:
                if name in required_tags:
                    return None
                continue
            if type(value) is not str or not value or tags.setdefault(name, value) != value:
                return None
        if topic_device is None:  # otherwise `tags` has it already, from the placeholder
            tags[DEVICE_ID_TAG] = device

        stamp = get(stamp_field, _MISSING)
        if stamp is _MISSING:
            time_ns = received
        else:
            within = parse_within(stamp, earliest, latest)  # the detailed path's skew check, rearranged
            if within is None:
                return None
            time_ns = within
        return Reading(measurement, device, tags, fields, time_ns, received)

    return read
