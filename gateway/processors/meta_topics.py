"""Which MQTT topics carry device metadata (`invalidation.meta_topics`), with the same pattern
rules as routes (`gateway.ingress.topics`): `{device_id}` names the device."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.message import DeadLetter, RawMessage
from gateway.ingress.topics import RouteConfig, TopicRouter
from gateway.processors.invalidation import ChangeDetector
from gateway.processors.metadata import MetadataError, parse_meta


class MetaTopics:
    def __init__(self, patterns: Sequence[str]) -> None:
        self._router = TopicRouter([RouteConfig(pattern=p, schema_name="meta") for p in patterns])
        self._any = bool(patterns)  # asked per message by the ingest path: `routes` would copy a list

    def __bool__(self) -> bool:
        return self._any

    def device_of(self, topic: str) -> str | None:
        """The device id if `topic` is a metadata topic, else None."""
        found = self._router.match(topic)
        return None if found is None else found[1].get("device_id")

    def subscription_filters(self) -> list[str]:
        return self._router.subscription_filters()


async def handle_meta_message(detector: ChangeDetector, raw: RawMessage, device_id: str) -> DeadLetter | None:
    """Store a metadata message and record the change; a dead letter if it is not a JSON object.

    An empty payload (a retained message being cleared) records empty metadata.
    """
    try:
        meta = parse_meta(raw.payload) if raw.payload.strip() else {}
    except MetadataError as exc:
        return DeadLetter(
            topic=raw.topic, payload=raw.payload, reason=str(exc), source="metadata",
            received_ns=raw.received_ns, client_id=raw.client_id, code="bad_metadata",
        )  # fmt: skip
    await detector.record_meta(device_id, meta, "meta")
    return None
