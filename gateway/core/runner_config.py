"""Settings of one `gateway.core.sink_runner.SinkRunner` (one per sink, next to the sink's own config)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from gateway.core.duration import Duration


class RunnerConfig(BaseModel):
    """How a runner drives its sink: concurrency, retry pacing, replay rate, lease upkeep, dead letters.

    `lease_extend_interval` must be shorter than the subscription's `ack_deadline`
    (the runner cannot see it): every interval the runner extends the lease of every
    message it still holds, so a write that is slow or retried for an hour is not
    redelivered behind its back.
    """

    model_config = ConfigDict(extra="forbid")

    max_in_flight: PositiveInt = Field(
        2, description="Batches written at once; 1 writes them strictly in pull order (per-device ordering)."
    )
    retry_min_backoff: Duration = Field(
        timedelta(milliseconds=200), description="First retry delay after a transient failure (and least delay ever)."
    )
    retry_max_backoff: Duration = Field(
        timedelta(seconds=30), description="Cap of the jittered exponential retry delay."
    )
    lease_extend_interval: Duration = Field(
        timedelta(seconds=5), description="How often held messages get their ack deadline extended; below ack_deadline."
    )
    dead_letter_topic: str | None = Field(
        "deadletter",
        description="Where permanently rejected items go; null (the dead-letter sink itself) logs and drops.",
    )
    max_retries: PositiveInt | None = Field(
        None,
        description="Retries of a transient failure before the items are dead-lettered with the last reason; "
        "null retries forever (stores: hold the backlog). Set it for forwarders (webhook, MQTT, Redis).",
    )
    max_rate: PositiveFloat | None = Field(
        None,
        description="Most items sent to the sink per second, retries included (a token bucket with a burst of "
        "one second's worth), so that a backlog replayed after an outage does not flood the store; null: no limit.",
    )

    @model_validator(mode="after")
    def _check_durations(self) -> RunnerConfig:
        if self.retry_min_backoff <= timedelta(0):
            raise ValueError("retry_min_backoff must be positive")
        if self.retry_max_backoff < self.retry_min_backoff:
            raise ValueError("retry_max_backoff must be at least retry_min_backoff")
        if self.lease_extend_interval <= timedelta(0):
            raise ValueError("lease_extend_interval must be positive")
        return self
