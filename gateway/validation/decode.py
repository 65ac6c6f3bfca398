"""Decode one MQTT message into readings and rejections.

`Decoder.decode` is the whole validation step of the ingress: size limit, topic route,
JSON, payload shape, schema, device id, tags, timestamp and clock skew, in that order; the
first failing check decides an element's reject code.

Guarantees:

* `decode` never raises (for any bytes and any topic): an unexpected failure becomes one
  `internal_error` rejection of the whole message, and any readings made from it so far
  are discarded, so every message ends up either stored or dead-lettered, never both.
* A message is either a JSON object (one reading) or a non-empty JSON array of objects
  (a batch). In a batch, valid elements become readings and each invalid element becomes
  its own rejection whose payload is that element re-serialised with orjson and whose
  reason starts with `element I of N:` (I counts from 1). A whole-message problem (size,
  route, JSON, shape) gives one rejection carrying the original payload unchanged.
* Every rejection has a `code` (see `RejectCode`, a bounded set usable as a metric label)
  and a dead letter with `source="validation"`, the message's topic, receive time and
  client id, and a reason naming the field and what was wrong.
* The device id comes from the topic placeholder `{device_id}` and/or the payload's
  `device_id_field` (a non-empty string); when both are present they must agree
  (`device_mismatch`). It is always also the tag `device_id`.
* Tags are the route's static tags, the topic's placeholder values and the schema's tag
  fields. A tag field that names a static tag or a placeholder must agree with it when
  present in the payload (`tag_mismatch`): the payload can confirm a route's tag, never
  change it.
* A missing timestamp means the receive time. Timestamp forms: `gateway.validation.timestamps`.

Readings and rejections each keep element order. Not promised: that an element with several
problems reports all of them (schema errors are listed, up to three; later checks stop at the first).

Speed: route matches are kept per topic (up to `TOPIC_CACHE_SIZE` topics, then the cache
starts over). An array first tries `gateway.validation.fastbatch`, which makes the same
readings for an array of plainly valid elements in a few passes; otherwise each element
tries `gateway.validation.fastpath`, which makes the same reading for a plainly valid
element; anything else takes the detailed path below, which alone decides rejections and
their reasons. `decode_singles` does the same for many one-object messages at once
(`gateway.validation.fastsingles`), answering only when all are plainly valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from operator import attrgetter, methodcaller
from typing import Any

import orjson

from gateway.core.message import DeadLetter, RawMessage, Reading
from gateway.ingress.topics import DEVICE_ID_TAG, RouteConfig, TopicRouter
from gateway.validation.config import SchemaConfig, ValidationConfig
from gateway.validation.fastbatch import make_batch_reader
from gateway.validation.fastpath import TopicPlan, make_reader
from gateway.validation.fastsingles import make_singles_reader
from gateway.validation.schema import CompiledSchema, ElementError, RejectCode, describe, json_kind, show
from gateway.validation.timestamps import describe_offset, format_ns, parse_timestamp

SOURCE = "validation"
TOPIC_CACHE_SIZE = 8192  # topics whose route match is kept (about 600 bytes each)
_MISSING: Any = object()
_payload, _topic, _received_ns = attrgetter("payload"), attrgetter("topic"), attrgetter("received_ns")
_schema_name, _tags, _device = attrgetter("route.schema_name"), attrgetter("tags"), attrgetter("device")
_starts_object = methodcaller("startswith", b"{")


@dataclass(slots=True)
class Rejection:
    """A refused message or batch element, and its reject code."""

    dead_letter: DeadLetter
    code: RejectCode


@dataclass(slots=True)
class DecodeResult:
    """What one message became. Both lists may be non-empty (a partly valid batch)."""

    readings: list[Reading]
    rejects: list[Rejection]


class Decoder:
    """Routes, parses and validates messages; built once at startup from configuration.

    The constructor raises ValueError when the configuration cannot work: a route names
    an unknown schema, or a (non-tag) field of its schema has the name of one of the
    route's tags (a static tag, a placeholder or `device_id`).

    The router's answer for a topic is kept (see `TOPIC_CACHE_SIZE`), so it must depend on
    the topic alone, as `TopicRouter.match` does. Only topics that match a route are kept.
    """

    def __init__(self, router: TopicRouter, schemas: Mapping[str, SchemaConfig], config: ValidationConfig) -> None:
        self._router = router
        self._config = config
        self._max_bytes = config.max_payload_bytes
        self._max_readings = config.max_readings_per_message
        self._future_ns = _ns(config.max_future_skew)
        self._past_ns = _ns(config.max_past_skew)
        self._schemas: dict[str, CompiledSchema] = {}
        for name, schema in schemas.items():
            try:
                self._schemas[name] = CompiledSchema(name, schema)
            except ValueError as exc:
                raise ValueError(f"schema {name!r}: {exc}") from exc
        for route in router.routes:
            _check_route(route, schemas)
        self._readers = {name: make_reader(schema) for name, schema in self._schemas.items()}
        self._batch_readers = {name: make_batch_reader(schema) for name, schema in self._schemas.items()}
        self._singles_readers = {name: make_singles_reader(schema) for name, schema in self._schemas.items()}
        self._plans: dict[str, TopicPlan] = {}

    def decode(self, raw: RawMessage) -> DecodeResult:
        """Readings and rejections for one message. Never raises."""
        try:
            return self._decode(raw)
        except Exception as exc:
            reason = f"internal error while decoding: {type(exc).__name__}: {exc}"
            return DecodeResult([], [_reject(raw, raw.payload, "internal_error", reason)])

    def decode_singles(self, raws: Sequence[RawMessage]) -> list[Reading] | None:
        """One reading per message, equal to what `decode` makes of each, when every message is
        one plainly valid JSON object on an already seen topic and all share one schema (see
        `gateway.validation.fastsingles`); else None: decode them one by one. Never raises."""
        try:
            payloads = list(map(_payload, raws))
            if not payloads or max(map(len, payloads)) > self._max_bytes:
                return None
            if not all(map(_starts_object, payloads)):  # an array (a batch) or odd bytes: not parsed twice
                return None
            plans = list(map(self._plans.get, map(_topic, raws)))
            if not all(plans):
                return None
            names = set(map(_schema_name, plans))
            if len(names) != 1:
                return None
            elements = list(map(orjson.loads, payloads))
            read = self._singles_readers[names.pop()]
            bases, devices = list(map(_tags, plans)), list(map(_device, plans))
            return read(elements, list(map(_received_ns, raws)), self._past_ns, self._future_ns, bases, devices)
        except Exception:  # malformed JSON, or a bug: the message-by-message way decides
            return None

    def _decode(self, raw: RawMessage) -> DecodeResult:
        payload = raw.payload
        if len(payload) > self._max_bytes:
            reason = f"payload is {len(payload)} bytes, more than the limit of {self._max_bytes}"
            return DecodeResult([], [_reject(raw, payload, "too_large", reason)])
        plan = self._plans.get(raw.topic)
        if plan is None:
            plan = self._plan(raw.topic)
            if plan is None:
                return DecodeResult([], [_reject(raw, payload, "no_route", f"no route matches topic {raw.topic!r}")])
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return DecodeResult([], [_reject(raw, payload, "malformed_json", f"payload is not valid JSON: {exc}")])
        received, read, tags, device = raw.received_ns, plan.read, plan.tags, plan.device
        earliest, latest = received - self._past_ns, received + self._future_ns
        if isinstance(data, dict):
            reading = read(data, received, earliest, latest, tags, device)
            if reading is not None:
                return DecodeResult([reading], [])
            try:
                return DecodeResult([self._reading(raw, plan, data)], [])
            except ElementError as err:
                return DecodeResult([], [_reject(raw, payload, err.code, err.reason)])
        if not isinstance(data, list):
            reason = f"payload must be a JSON object or an array of objects, got {json_kind(data)}"
            return DecodeResult([], [_reject(raw, payload, "not_object", reason)])
        if not data:
            return DecodeResult([], [_reject(raw, payload, "empty_batch", "payload is an empty JSON array")])
        if len(data) > self._max_readings:
            reason = f"payload has {len(data)} readings, more than the limit of {self._max_readings}"
            return DecodeResult([], [_reject(raw, payload, "too_many_readings", reason)])
        every = plan.read_many(data, received, earliest, latest, tags, device)
        if every is not None:
            return DecodeResult(every, [])
        made = [read(element, received, earliest, latest, tags, device) for element in data]
        readings: list[Reading] = []
        rejects: list[Rejection] = []
        total = len(data)
        for index, (element, reading) in enumerate(zip(data, made, strict=True), start=1):
            if reading is not None:
                readings.append(reading)
                continue
            try:
                if not isinstance(element, dict):
                    raise ElementError("not_object", f"expected a JSON object, got {json_kind(element)}")
                readings.append(self._reading(raw, plan, element))
            except ElementError as err:
                reason = f"element {index} of {total}: {err.reason}"
                rejects.append(_reject(raw, orjson.dumps(element), err.code, reason))
        return DecodeResult(readings, rejects)

    def _plan(self, topic: str) -> TopicPlan | None:
        """Route `topic` (None: no route) and remember the result, within `TOPIC_CACHE_SIZE` topics."""
        matched = self._router.match(topic)
        if matched is None:
            return None
        route, values = matched
        name = route.schema_name
        plan = TopicPlan.of(route, values, self._schemas[name], self._readers[name], self._batch_readers[name])
        if len(self._plans) >= TOPIC_CACHE_SIZE:
            self._plans.clear()
        self._plans[topic] = plan
        return plan

    def _reading(self, raw: RawMessage, plan: TopicPlan, element: dict[str, Any]) -> Reading:
        """The detailed path: the element's reading, or `ElementError` saying what is wrong first."""
        route, values, schema = plan.route, plan.values, plan.schema
        fields, tag_fields = schema.check(element)
        device_id = self._device_id(schema, values.get(DEVICE_ID_TAG), element.get(schema.device_id_field, _MISSING))
        tags = {**route.tags, **values} if route.tags else dict(values)
        for key, value in tag_fields.items():
            known = tags.setdefault(key, value)
            if known != value:
                whose = "route's static tag" if key in route.tags else "topic"
                raise ElementError(
                    "tag_mismatch", f"tag field {key!r} says {show(value)} but the {whose} says {show(known)}"
                )
        tags[DEVICE_ID_TAG] = device_id
        received = raw.received_ns
        stamp = element.get(schema.timestamp_field, _MISSING)
        time_ns = received if stamp is _MISSING else self._time_ns(schema.timestamp_field, stamp, received)
        return Reading(schema.measurement, device_id, tags, fields, time_ns, received)

    @staticmethod
    def _device_id(schema: CompiledSchema, from_topic: str | None, from_payload: object) -> str:
        field = schema.device_id_field
        if from_payload is _MISSING:
            if from_topic is None:
                raise ElementError(
                    "missing_device_id",
                    f"no device id: the topic has no {{device_id}} level and the payload has no {field!r} field",
                )
            return from_topic
        if not isinstance(from_payload, str) or not from_payload:
            got = "an empty string" if from_payload == "" else describe(from_payload)
            raise ElementError("wrong_type", f"field {field!r}: expected a non-empty string, got {got}")
        if from_topic is not None and from_topic != from_payload:
            raise ElementError(
                "device_mismatch",
                f"field {field!r} says device {show(from_payload)} but the topic says {show(from_topic)}",
            )
        return from_payload

    def _time_ns(self, field: str, stamp: object, received: int) -> int:
        try:
            time_ns = parse_timestamp(stamp)
        except ValueError as exc:
            raise ElementError("bad_timestamp", f"field {field!r}: {exc}") from None
        ahead = time_ns - received
        if ahead > self._future_ns:
            raise ElementError(
                "clock_skew",
                f"field {field!r}: {format_ns(time_ns)} is {describe_offset(ahead)} ahead of the receive time "
                f"{format_ns(received)} (limit {self._config.max_future_skew})",
            )
        if -ahead > self._past_ns:
            raise ElementError(
                "clock_skew",
                f"field {field!r}: {format_ns(time_ns)} is {describe_offset(ahead)} behind the receive time "
                f"{format_ns(received)} (limit {self._config.max_past_skew})",
            )
        return time_ns


def _ns(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _reject(raw: RawMessage, payload: bytes, code: RejectCode, reason: str) -> Rejection:
    letter = DeadLetter(
        topic=raw.topic,
        payload=payload,
        reason=reason,
        source=SOURCE,
        received_ns=raw.received_ns,
        client_id=raw.client_id,
        code=code,
    )
    return Rejection(letter, code)


def _check_route(route: RouteConfig, schemas: Mapping[str, SchemaConfig]) -> None:
    schema = schemas.get(route.schema_name)
    where = f"route {route.pattern!r}"
    if schema is None:
        known = ", ".join(repr(n) for n in sorted(schemas)) or "none"
        raise ValueError(f"{where} names schema {route.schema_name!r}, which is not configured (known: {known})")
    owners: dict[str, str] = {DEVICE_ID_TAG: "the device id tag"}
    for name in route.placeholders:
        if name != DEVICE_ID_TAG:
            owners[name] = f"placeholder {{{name}}}"
    for name in route.tags:
        owners[name] = f"static tag {name!r}"
    for name, spec in schema.fields.items():
        if not spec.tag and name in owners:
            raise ValueError(
                f"{where}: field {name!r} of schema {route.schema_name!r} has the same name as {owners[name]}"
            )
