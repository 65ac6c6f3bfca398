"""Settings of the processors: `alerts` (rule engine) and `invalidation` (cache-change detector).

Both consume a subscription of the `telemetry` topic through a `SinkRunner` configured by
`runner` (forced to `max_in_flight: 1`, so readings are processed in order; `max_retries`
defaults to 3, then a reading the processor cannot handle is dead-lettered instead of
stalling its subscription). Rules are keyed by name, like sinks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.duration import Duration
from gateway.core.runner_config import RunnerConfig
from gateway.ingress.topics import RouteConfig
from gateway.processors.rules import AlertRule


def _processor_runner(value: Any) -> Any:
    data = {"max_retries": 3, **(value or {})} if isinstance(value, dict) or value is None else value
    if isinstance(data, dict):
        data["max_in_flight"] = 1
    return data


class AlertsConfig(BaseModel):
    """The alert engine: rules evaluated on every reading of `subscription`."""

    model_config = ConfigDict(extra="forbid")

    subscription: str = Field(min_length=1, description="A subscription on the telemetry topic.")
    state_file: str = Field(
        "alerts.json", description="Firing alerts and last-seen times (kept across restarts); relative to data_dir."
    )
    state_interval: Duration = Field(
        timedelta(seconds=10), description="How often moving last-seen times are saved (and at stop)."
    )
    check_interval: Duration = Field(timedelta(seconds=1), description="How often absence rules are checked.")
    rules: dict[str, AlertRule] = Field(default_factory=dict)
    runner: RunnerConfig = Field(default_factory=lambda: RunnerConfig(max_in_flight=1, max_retries=3))

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            rules = data.get("rules")
            if isinstance(rules, dict):
                data["rules"] = {k: ({"name": k, **v} if isinstance(v, dict) else v) for k, v in rules.items()}
            if "runner" in data:
                data["runner"] = _processor_runner(data["runner"])
        return data

    @field_validator("check_interval", "state_interval")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be positive")
        return v


class InvalidationConfig(BaseModel):
    """Where device changes come from, and how they are coalesced into invalidations."""

    model_config = ConfigDict(extra="forbid")

    subscription: str | None = Field(
        None, description="A subscription on the telemetry topic; needed when state_fields is not empty."
    )
    meta_topics: list[str] = Field(
        default_factory=list, description="MQTT topic patterns carrying device metadata, e.g. devices/{device_id}/meta."
    )
    state_fields: list[str] = Field(default_factory=list, description="Reading fields whose change invalidates.")
    object_type: str = Field("device", min_length=1, description="Object type named in the events.")
    window: Duration = Field(timedelta(milliseconds=500), description="Changes of one id within it become one event.")
    after_sink: str | None = Field(
        None, description="Telemetry-caused invalidations wait until this sink has stored the reading."
    )
    metadata_db: str = Field("metadata.db", description="Device metadata store (SQLite); relative to data_dir.")
    state_file: str = Field(
        "invalidation-state.json",
        description="Last values of the state fields and unsent invalidations (kept across restarts); in data_dir.",
    )
    state_interval: Duration = Field(timedelta(seconds=10), description="How often changed baselines are saved.")
    runner: RunnerConfig = Field(default_factory=lambda: RunnerConfig(max_in_flight=1, max_retries=3))

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if isinstance(data, dict) and "runner" in data:
            data = {**data, "runner": _processor_runner(data["runner"])}
        return data

    @field_validator("meta_topics")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            route = RouteConfig(pattern=p, schema_name="meta")
            if "device_id" not in route.placeholders:
                raise ValueError(f"meta topic pattern {p!r} needs a {{device_id}} placeholder")
        return patterns

    @model_validator(mode="after")
    def _needs_subscription(self) -> InvalidationConfig:
        if self.state_fields and self.subscription is None:
            raise ValueError("state_fields need a subscription (on the telemetry topic) to watch")
        if self.window <= timedelta(0):
            raise ValueError("window must be positive")
        if self.state_interval <= timedelta(0):
            raise ValueError("state_interval must be positive")
        return self
