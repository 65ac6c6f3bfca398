"""The operator's configuration: one YAML file, every key overridable from the environment.

Precedence, highest first: environment variables `GATEWAY_<SECTION>__<KEY>` (nested keys
joined by `__`, e.g. `GATEWAY_INGRESS__PORT=1884`, `GATEWAY_SINKS__TSDB__TOKEN=...`), then
the YAML file, then the defaults below. Unknown keys are errors everywhere. Components
(ingress, sinks, subscriptions) are chosen by a `type` key and keyed by name in mappings,
so that each one is addressable from the environment.

`load_settings` returns a fully checked `GatewaySettings` or raises `ConfigError` listing
every problem with file, line, key path and what was expected. Loading does no I/O
beyond reading the file.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.bus.sqlite import SQLiteBusConfig
from gateway.config_errors import ConfigError, format_validation_error, load_yaml
from gateway.core.bus import SubscriptionConfig
from gateway.core.duration import Duration
from gateway.ingress.config import EmbeddedIngressConfig, IngressConfig
from gateway.ingress.topics import RouteConfig
from gateway.processors.config import AlertsConfig, InvalidationConfig
from gateway.security.config import SecurityConfig, is_loopback
from gateway.sinks.deadletter_file import DeadLetterFileConfig
from gateway.sinks.influxdb import InfluxDBSinkConfig
from gateway.sinks.log import LogSinkConfig
from gateway.sinks.mqtt_publish import MQTTPublishSinkConfig
from gateway.sinks.redis import RedisSinkConfig
from gateway.sinks.sqlite_store import SQLiteStoreConfig
from gateway.sinks.webhook import WebhookSinkConfig
from gateway.validation.config import SchemaConfig, ValidationConfig

TELEMETRY_TOPIC = "telemetry"
DEADLETTER_TOPIC = "deadletter"
ALERTS_TOPIC = "alerts"
INVALIDATIONS_TOPIC = "invalidations"
INTERNAL_TOPICS = (TELEMETRY_TOPIC, DEADLETTER_TOPIC, ALERTS_TOPIC, INVALIDATIONS_TOPIC)
DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")

SinkConfig = Annotated[
    InfluxDBSinkConfig
    | SQLiteStoreConfig
    | DeadLetterFileConfig
    | LogSinkConfig
    | WebhookSinkConfig
    | MQTTPublishSinkConfig
    | RedisSinkConfig,
    Field(discriminator="type"),
]


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = Field("text", description="json: one JSON object per line, for log shippers.")


class AdminConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = Field("127.0.0.1", description="Loopback by default: the endpoint is not exposed.")
    port: int = Field(9464, ge=0, le=65535)
    token: SecretStr | None = Field(
        None, description="Bearer token for everything but /healthz and /metrics; required when host is not loopback."
    )

    @field_validator("token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _token_when_exposed(self) -> AdminConfig:
        if self.enabled and self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"the admin endpoint is exposed on {self.host} without a token: set admin.token "
                "(e.g. GATEWAY_ADMIN__TOKEN) or bind admin.host to 127.0.0.1"
            )
        return self


class BusSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["sqlite", "memory"] = Field(
        "sqlite",
        description="sqlite: durable log in data_dir, kept across crashes and restarts (default); "
        "memory: faster, loses what it holds when the process ends.",
    )
    sqlite: SQLiteBusConfig = Field(default_factory=SQLiteBusConfig, description="Storage of the sqlite bus.")
    subscriptions: dict[str, SubscriptionConfig] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: Any) -> Any:
        return _inject_names(data, "subscriptions")


class ShutdownConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drain_timeout: Duration = Field(timedelta(seconds=15), description="Longest wait for in-flight writes on SIGTERM.")


def _inject_names(data: Any, section: str) -> Any:
    """`{section: {name: {...}}}` → each entry gets `name: <key>` unless it has one."""
    if isinstance(data, dict) and isinstance(data.get(section), dict):
        entries = data[section]
        data = {**data, section: {k: ({"name": k, **v} if isinstance(v, dict) else v) for k, v in entries.items()}}
    return data


def default_subscriptions() -> dict[str, dict[str, Any]]:
    return {
        "store": {"topic": TELEMETRY_TOPIC},
        "deadletters": {"topic": DEADLETTER_TOPIC, "dead_letter_topic": None},
    }


def default_sinks() -> dict[str, dict[str, Any]]:
    return {
        "store": {"type": "sqlite", "subscription": "store"},
        "deadletters": {"type": "deadletter_file", "subscription": "deadletters"},
    }


class GatewaySettings(BaseSettings):
    """The root of the operator's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
        nested_model_default_partial_update=True,
    )

    data_dir: Path = Field(Path("data"), description="Where the embedded store and dead letters live.")
    log: LogConfig = Field(default_factory=LogConfig)
    ingress: IngressConfig = Field(default_factory=lambda: EmbeddedIngressConfig(type="embedded"))
    routes: list[RouteConfig] = Field(default_factory=list)
    schemas: dict[str, SchemaConfig] = Field(default_factory=dict)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    bus: BusSettings = Field(default_factory=BusSettings)
    sinks: dict[str, SinkConfig] = Field(default_factory=dict)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    alerts: AlertsConfig | None = Field(None, description="Alert rules on telemetry (gateway.processors).")
    invalidation: InvalidationConfig | None = Field(None, description="Cache invalidation from device changes.")

    @model_validator(mode="before")
    @classmethod
    def _defaults_and_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        bus = dict(data.get("bus") or {})
        if not bus.get("subscriptions") and not data.get("sinks"):
            bus["subscriptions"] = default_subscriptions()
            data["sinks"] = default_sinks()
        data["bus"] = bus
        return _inject_names(data, "sinks")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)


def _cross_check(s: GatewaySettings) -> list[tuple[tuple[str, ...], str]]:
    """References between sections: what pydantic cannot see within one model."""
    problems: list[tuple[tuple[str, ...], str]] = []
    subs = s.bus.subscriptions
    for name, sub in subs.items():
        if sub.topic not in INTERNAL_TOPICS:
            problems.append(
                (
                    ("bus", "subscriptions", name, "topic"),
                    f"unknown topic {sub.topic!r}; expected one of {list(INTERNAL_TOPICS)}",
                )
            )
        if sub.dead_letter_topic is not None and sub.dead_letter_topic not in INTERNAL_TOPICS:
            problems.append(
                (
                    ("bus", "subscriptions", name, "dead_letter_topic"),
                    f"unknown topic {sub.dead_letter_topic!r}; expected one of {list(INTERNAL_TOPICS)} or null",
                )
            )
        if sub.topic == DEADLETTER_TOPIC and sub.dead_letter_topic == DEADLETTER_TOPIC:
            problems.append(
                (
                    ("bus", "subscriptions", name, "dead_letter_topic"),
                    "a subscription of the deadletter topic cannot dead-letter into it (loop); use null",
                )
            )
    from gateway.processors.checks import processor_problems, processor_subscriptions

    problems.extend(processor_problems(s, TELEMETRY_TOPIC))
    consumed: set[str] = set(processor_subscriptions(s))
    for name, sink in s.sinks.items():
        if sink.subscription not in subs:
            problems.append(
                (
                    ("sinks", name, "subscription"),
                    f"no subscription named {sink.subscription!r}; defined: {sorted(subs)}",
                )
            )
        consumed.add(sink.subscription)
        sub_cfg = subs.get(sink.subscription)
        if sub_cfg is not None and sink.runner.lease_extend_interval >= sub_cfg.ack_deadline:
            problems.append(
                (
                    ("sinks", name, "runner", "lease_extend_interval"),
                    f"must be shorter than subscription {sink.subscription!r}'s ack_deadline ({sub_cfg.ack_deadline})",
                )
            )
    for name in subs:
        if name not in consumed:
            problems.append(
                (
                    ("bus", "subscriptions", name),
                    "no sink consumes this subscription: it would fill up and stall ingestion",
                )
            )
    if not any(sub.topic == TELEMETRY_TOPIC for sub in subs.values()):
        problems.append(
            (("bus", "subscriptions"), f"no subscription on the {TELEMETRY_TOPIC!r} topic: readings would go nowhere")
        )
    if not any(sub.topic == DEADLETTER_TOPIC for sub in subs.values()):
        problems.append(
            (
                ("bus", "subscriptions"),
                f"no subscription on the {DEADLETTER_TOPIC!r} topic: dead letters would go nowhere",
            )
        )
    for i, route in enumerate(s.routes):
        if route.schema_name not in s.schemas:
            problems.append(
                (("routes", str(i), "schema"), f"no schema named {route.schema_name!r}; defined: {sorted(s.schemas)}")
            )
    if not s.routes:
        problems.append((("routes",), "at least one route (topic pattern → schema) is needed"))
    return problems


def load_settings(path: Path | None) -> GatewaySettings:
    """Read, validate and cross-check the config at `path` (None: defaults and environment only)."""
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if path is not None:
        data, lines = load_yaml(path)
    try:
        settings = GatewaySettings(**data)
    except ValidationError as exc:
        raise format_validation_error(exc, path, data, lines) from None
    problems = _cross_check(settings)
    if problems:
        msgs = []
        for key, msg in problems:
            line = next((lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in lines), None)
            msgs.append(f"{f'line {line}: ' if line else ''}{'.'.join(key)}: {msg}")
        raise ConfigError(path, msgs)
    settings.data_dir = settings.data_dir.expanduser().resolve()
    return settings
