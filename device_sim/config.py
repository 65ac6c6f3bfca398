"""The simulator's settings: one pydantic model, built by the CLI or by callers of the API.

`SimConfig` is checked once; everything downstream trusts it. Guarantees after validation:
exactly one of `rate` / `total_rate` is set (`rate` defaults to 1 message per second per
device), the topic template only uses the placeholders `{device_id}` and `{site}`,
`processes > 1` only in the multiplexed mode and with at least as many connections as
processes, and the burst length is shorter than its period.

Not promised: that the broker is reachable or accepts the credentials (checked at connect).
"""

from __future__ import annotations

import re
import ssl
import string
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

PER_DEVICE_LIMIT = 2000
DEFAULT_CONNECTIONS = 16
TEMPLATE_FIELDS = frozenset({"device_id", "site"})

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """`250ms`, `30s`, `5m`, `1h30m`, `2d` or a number of seconds → timedelta; ISO 8601 (`PT5S`) and
    timedeltas pass through to pydantic."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text and _PART.sub("", text) == "":
            value = timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text)))
        elif not text.upper().startswith("P"):  # ISO 8601 (PT5S) is left to pydantic
            try:
                value = timedelta(seconds=float(text))
            except ValueError:
                raise ValueError(f"not a duration: {value!r} (write e.g. 250ms, 30s, 5m, 2h)") from None
    if isinstance(value, timedelta) and value < timedelta(0):
        raise ValueError("a duration cannot be negative")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class BurstSpec(BaseModel):
    """Periodic bursts: for `length` at the start of every `every`, the rate is multiplied by `factor`."""

    model_config = ConfigDict(extra="forbid")

    factor: float = Field(5.0, gt=1.0)
    every: Duration = timedelta(seconds=10)
    length: Duration = timedelta(seconds=1)

    @model_validator(mode="after")
    def _check(self) -> BurstSpec:
        if not timedelta(0) < self.length < self.every:
            raise ValueError(f"burst length ({self.length}) must be above 0 and shorter than its period ({self.every})")
        return self

    @classmethod
    def parse(cls, text: str) -> BurstSpec:
        """`FACTOR,EVERY,LENGTH`, e.g. `5,10s,1s`; trailing parts may be left out."""
        parts = [p.strip() for p in text.split(",")]
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise ValueError(f"burst {text!r}: expected FACTOR[,EVERY[,LENGTH]], e.g. 5,10s,1s")
        keys = ("factor", "every", "length")
        return cls.model_validate(dict(zip(keys, parts, strict=False)))


class SimConfig(BaseModel):
    """Everything one simulator run needs. See `device-sim --help` for each option's meaning."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None

    devices: int = Field(10, ge=1, le=10_000_000)
    rate: float | None = Field(None, gt=0, description="Messages per second per device.")
    total_rate: float | None = Field(None, gt=0, description="Messages per second for the whole fleet.")
    duration: Duration | None = None
    count: int | None = Field(None, ge=1, description="Total messages (sent or failed) before stopping.")
    qos: Literal[0, 1] = 1
    batch: int = Field(1, ge=1, le=100_000, description="Readings per message; above 1 a JSON array.")
    topic_template: str = "devices/{device_id}/telemetry"
    seed: int = 0
    sites: int = Field(1, ge=1)
    id_prefix: str = "dev-"

    bad_ratio: float = Field(0.0, ge=0.0, le=1.0)
    anomalies: bool = False
    clock_skew: Duration = timedelta(0)
    burst: BurstSpec | None = None
    churn: Duration | None = None
    churn_fraction: float = Field(0.1, gt=0.0, le=1.0)

    connections: int | None = Field(None, ge=1)
    processes: int = Field(1, ge=1, le=64)
    preload: bool = Field(False, description="Generate messages before the start (see device_sim.driver).")
    inflight: int = Field(1000, ge=1, le=65_000, description="Unacknowledged QoS 1 publishes per connection.")
    keepalive: Duration = timedelta(seconds=60)
    connect_timeout: Duration = timedelta(seconds=10)
    drain_timeout: Duration = timedelta(seconds=5)
    progress: bool | None = Field(None, description="Status line on stderr; None: only when stderr is a TTY.")

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if self.rate is not None and self.total_rate is not None:
            raise ValueError("give either rate (per device) or total_rate (whole fleet), not both")
        if self.rate is None and self.total_rate is None:
            self.rate = 1.0
        names = {name for _, name, _, _ in string.Formatter().parse(self.topic_template) if name is not None}
        unknown = names - TEMPLATE_FIELDS
        if unknown or "" in names:
            raise ValueError(
                f"topic template {self.topic_template!r}: only {{device_id}} and {{site}} may be used, "
                f"not {', '.join(sorted(repr(n) for n in unknown)) or 'positional {}'}"
            )
        if "+" in self.topic_template or "#" in self.topic_template:
            raise ValueError("topic template must not contain the MQTT wildcards '+' or '#'")
        if self.processes > 1 and self.mode != "multiplexed":
            raise ValueError("processes > 1 needs the multiplexed mode (give connections)")
        if self.processes > self.effective_connections:
            raise ValueError(f"processes ({self.processes}) must not exceed connections ({self.effective_connections})")
        if self.duration is not None and self.duration <= timedelta(0):
            raise ValueError("duration must be above 0")
        if self.churn is not None and self.churn <= timedelta(0):
            raise ValueError("churn period must be above 0")
        if self.ca_file is not None:
            self.tls = True
        return self

    @property
    def mode(self) -> Literal["per-device", "multiplexed"]:
        """per-device: one MQTT connection per device; multiplexed: `connections` shared connections."""
        if self.connections is None and self.devices <= PER_DEVICE_LIMIT:
            return "per-device"
        return "multiplexed"

    @property
    def effective_connections(self) -> int:
        if self.mode == "per-device":
            return self.devices
        return self.connections if self.connections is not None else min(self.devices, DEFAULT_CONNECTIONS)

    @property
    def fleet_rate(self) -> float:
        """Base messages per second of the whole fleet (bursts come on top)."""
        if self.total_rate is not None:
            return self.total_rate
        assert self.rate is not None
        return self.rate * self.devices

    @property
    def device_rate(self) -> float:
        return self.fleet_rate / self.devices

    @property
    def broker_url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for broker connections (reads `ca_file`), or None without TLS."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file is not None else None)
