"""What the forwarder sinks (log, webhook, mqtt_publish, redis) share.

Forwarders consume subscriptions of the `alerts` and `invalidations` topics. Unlike stores,
they give up: unless the config says otherwise their runner writes one batch at a time
(`max_in_flight: 1`, so a `resolved` never overtakes its `firing`) and retries a failing
destination `max_retries: 5` times with backoff, then dead-letters the events with the last
reason. Their subscriptions are separate from the store's, so a slow or dead destination
holds only its own backlog, never telemetry.
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from gateway.processors.events import AlertEvent, Invalidation
from gateway.sinks.config import SinkConfigBase

FORWARDER_RUNNER_DEFAULTS = {"max_in_flight": 1, "max_retries": 5}


class ForwarderConfigBase(SinkConfigBase):
    @model_validator(mode="before")
    @classmethod
    def _runner_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            runner = data.get("runner")
            if runner is None or isinstance(runner, dict):
                data = {**data, "runner": {**FORWARDER_RUNNER_DEFAULTS, **(runner or {})}}
        return data


def event_dict(item: object) -> dict[str, Any]:
    """The JSON form of an alert or invalidation; TypeError for anything else."""
    if isinstance(item, AlertEvent | Invalidation):
        return item.to_dict()
    raise TypeError(f"not an alert or invalidation event but a {type(item).__name__}")


def event_kind(item: object) -> str:
    return "alert" if isinstance(item, AlertEvent) else "invalidation"
