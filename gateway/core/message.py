"""The values that flow through the gateway.

A device's MQTT publish becomes one `RawMessage`; decoding turns it into zero or more
`Reading` values (valid) or exactly one `DeadLetter` (invalid). Readings and dead letters
travel on internal topics as the `data` of bus messages (`gateway.core.bus`): one bus
message per device publish, holding its one `Reading`, or a `ReadingBatch` when the publish
carried several readings of one device. Consumers see readings one by one: the sink runner
unpacks batches (`gateway.core.sink_runner`).

These are plain slotted dataclasses: they are created on the hot path, so they do no
validation of their own. Validation happens once, in `gateway.validation`.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

FieldValue = float | int | bool | str
INT64_MIN = -(2**63)  # the integer field values every store can keep (int64)
INT64_MAX = 2**63 - 1


@dataclass(slots=True)
class RawMessage:
    """One MQTT publish as the ingress saw it.

    `received_ns` is the gateway's wall clock (epoch nanoseconds) when the publish arrived.
    `client_id` is known in embedded mode (the publishing device's MQTT client id) and None
    in client mode (an external broker does not tell subscribers who published).
    """

    topic: str
    payload: bytes
    qos: int = 0
    received_ns: int = field(default_factory=time.time_ns)
    client_id: str | None = None


@dataclass(slots=True)
class Reading:
    """One validated point: what a time-series store stores.

    Identity (for idempotent writes) is `measurement` + `tags` + `time_ns`: writing the
    same reading twice overwrites it instead of duplicating it.
    `device_id` is also present in `tags["device_id"]`; it is kept apart as the ordering key.
    Readings never change their `tags` or `fields` in place: readings decoded from one
    publish may share one `tags` dict (see `gateway.validation.fastbatch`).
    """

    measurement: str
    device_id: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_ns: int
    received_ns: int = 0


@dataclass(slots=True)
class ReadingBatch:
    """Several readings carried as one bus message: those of one device from one publish, or
    those of several single-reading publishes of any devices (`gateway.ingest.singles_messages`).

    Bus bookkeeping (lease, ack, durable append and paging) is then paid once per message
    instead of once per reading. Guarantee: `readings` is not empty and in receive order. A
    message with an ordering key holds readings of that device only; one of several devices
    has no ordering key, and is made only for topics no ordered subscription reads. The bus
    acks or dead-letters the batch as a whole; a sink still settles each reading on its own.
    """

    readings: list[Reading]


@dataclass(slots=True)
class DeadLetter:
    """A message the gateway could not take, with the reason why.

    `source` names the stage that refused it (for example `validation`,
    `subscription:tsdb`, `sink:tsdb`); `code` is a short fixed reason code (the `reason`
    label of `gateway_messages_invalid_total`, empty where the stage has none); `reason`
    names the field and what was wrong, in words an operator can act on.
    """

    topic: str
    payload: bytes
    reason: str
    source: str
    received_ns: int
    client_id: str | None = None
    attempts: int = 0
    code: str = ""

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready form written to the dead-letter file.

        The payload is kept as text when it is valid UTF-8 (`payload_encoding: utf-8`),
        otherwise base64 (`payload_encoding: base64`), so nothing of it is lost.
        """
        try:
            payload_text = self.payload.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            payload_text = base64.b64encode(self.payload).decode("ascii")
            encoding = "base64"
        return {
            "received_ns": self.received_ns,
            "received_at": _iso(self.received_ns),
            "topic": self.topic,
            "source": self.source,
            "code": self.code,
            "reason": self.reason,
            "client_id": self.client_id,
            "attempts": self.attempts,
            "payload": payload_text,
            "payload_encoding": encoding,
        }


def _iso(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="microseconds")


def dead_letter_for(data: object, reason: str, source: str, attempts: int = 0) -> DeadLetter:
    """Wrap whatever travelled on the bus as a `DeadLetter`, keeping all of it.

    A `DeadLetter` is returned with the new reason appended; a `Reading` is serialised to
    JSON as its payload (topic `reading/<measurement>/<device_id>`), a `ReadingBatch` to a
    JSON array of such objects (topic `reading/<measurement of the first>/<device_id>`, with
    `+` for the device when its readings are of several; each object's tags name its device);
    anything else is serialised with orjson's default rules.
    """
    import orjson

    if isinstance(data, DeadLetter):
        return DeadLetter(
            topic=data.topic,
            payload=data.payload,
            reason=f"{data.reason}; {reason}",
            source=source,
            received_ns=data.received_ns,
            client_id=data.client_id,
            attempts=attempts,
            code=data.code,
        )
    if isinstance(data, Reading | ReadingBatch):
        readings = data.readings if isinstance(data, ReadingBatch) else [data]
        points = [
            {"measurement": r.measurement, "tags": r.tags, "fields": r.fields, "time_ns": r.time_ns} for r in readings
        ]
        first = readings[0]
        device = first.device_id if all(r.device_id == first.device_id for r in readings) else "+"
        return DeadLetter(
            topic=f"reading/{first.measurement}/{device}",
            payload=orjson.dumps(points if isinstance(data, ReadingBatch) else points[0]),
            reason=reason,
            source=source,
            received_ns=first.received_ns or time.time_ns(),
            attempts=attempts,
        )
    return DeadLetter(
        topic="unknown",
        payload=orjson.dumps(data, default=repr),
        reason=reason,
        source=source,
        received_ns=time.time_ns(),
        attempts=attempts,
    )
