"""The messages processors publish: `AlertEvent` (topic `alerts`) and `Invalidation` (topic `invalidations`).

Both carry `received_ns`, the gateway's receipt time of what caused them, so that a
forwarder's `gateway_ingest_to_stored_seconds` is the latency from cause to delivery.
`to_dict()` is the JSON form every forwarder sends; `template_vars()` are the names topic
and key templates may use (`{device_id}`, ...). Templates are checked at config load with
`check_template`, so rendering never meets an unknown name.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.bus import codec

ALERT_TEMPLATE_VARS = frozenset({"alert_id", "rule", "status", "device_id", "severity"})
INVALIDATION_TEMPLATE_VARS = frozenset({"object_type", "id", "device_id"})


@dataclass(slots=True)
class AlertEvent:
    """One transition of one alert. `alert_id` is stable for a (rule, device) pair across its
    `firing` and `resolved` events (and later episodes); `started_ns` tells episodes apart."""

    alert_id: str
    rule: str
    status: Literal["firing", "resolved"]
    device_id: str
    severity: str
    summary: str
    labels: dict[str, str]
    tags: dict[str, str]
    value: float | None
    started_ns: int
    time_ns: int
    received_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "alert",
            "alert_id": self.alert_id,
            "rule": self.rule,
            "status": self.status,
            "device_id": self.device_id,
            "severity": self.severity,
            "summary": self.summary,
            "labels": self.labels,
            "tags": self.tags,
            "value": self.value,
            "started_ns": self.started_ns,
            "time_ns": self.time_ns,
        }

    def template_vars(self) -> dict[str, str]:
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "status": self.status,
            "device_id": self.device_id,
            "severity": self.severity,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlertEvent:
        return cls(
            alert_id=str(d["alert_id"]),
            rule=str(d["rule"]),
            status="resolved" if d.get("status") == "resolved" else "firing",
            device_id=str(d["device_id"]),
            severity=str(d.get("severity", "")),
            summary=str(d.get("summary", "")),
            labels={str(k): str(v) for k, v in dict(d.get("labels") or {}).items()},
            tags={str(k): str(v) for k, v in dict(d.get("tags") or {}).items()},
            value=None if d.get("value") is None else float(d["value"]),
            started_ns=int(d.get("started_ns", 0)),
            time_ns=int(d.get("time_ns", 0)),
        )


@dataclass(slots=True)
class Invalidation:
    """Cached copies of these objects are stale. `changes` counts the changes coalesced into
    this one event; `sources` says where they came from (`meta`, `admin`, `telemetry`)."""

    object_type: str
    ids: tuple[str, ...]
    sources: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    changes: int = 1
    time_ns: int = 0
    received_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "invalidation",
            "object_type": self.object_type,
            "ids": list(self.ids),
            "sources": list(self.sources),
            "fields": list(self.fields),
            "changes": self.changes,
            "time_ns": self.time_ns,
        }

    def template_vars_per_id(self) -> list[dict[str, str]]:
        """One set of template names per id (`{id}` and `{device_id}` are the id)."""
        return [{"object_type": self.object_type, "id": i, "device_id": i} for i in self.ids]


def check_template(template: str, allowed: frozenset[str]) -> str:
    """Return `template` if it only uses `{name}` fields from `allowed`; else raise ValueError."""
    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"template {template!r} is malformed: {exc}") from None
    for name in names:
        if name not in allowed:
            raise ValueError(f"template {template!r} uses unknown name {{{name}}}; allowed: {sorted(allowed)}")
    return template


def render(template: str, values: dict[str, str]) -> str:
    return template.format_map(values)


# How the durable bus stores these events (names are part of the on-disk format).
codec.register(
    AlertEvent,
    "alert.v1",
    lambda e: [e.alert_id, e.rule, e.status, e.device_id, e.severity, e.summary, e.labels, e.tags, e.value,
               e.started_ns, e.time_ns, e.received_ns],
    lambda t: AlertEvent(*t),
)  # fmt: skip
codec.register(
    Invalidation,
    "invalidation.v1",
    lambda e: [e.object_type, list(e.ids), list(e.sources), list(e.fields), e.changes, e.time_ns, e.received_ns,
               e.extra],
    lambda t: Invalidation(t[0], tuple(t[1]), tuple(t[2]), tuple(t[3]), t[4], t[5], t[6], t[7]),
)  # fmt: skip
