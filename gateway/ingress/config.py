"""Configuration of the MQTT ingress: an embedded broker or a client of an external one.

The root settings choose one with `ingress.type` (`embedded` or `client`). Every check that
can be made without I/O is made here, naming the offending key, so that a wrong value fails
at `check-config` rather than at the first connection.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from gateway.core.duration import Duration
from gateway.security.config import AclConfig, AuthConfig, ListenerTlsConfig, is_loopback

_MAX_SESSION_EXPIRY = timedelta(seconds=0xFFFFFFFF)  # MQTT 5: a four-byte integer of seconds
_MAX_KEEPALIVE = timedelta(seconds=0xFFFF)  # MQTT: a two-byte integer of seconds


class EmbeddedIngressConfig(BaseModel):
    """An MQTT broker (amqtt) inside the gateway process; devices connect to it directly."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["embedded"] = "embedded"
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to listen on. Loopback by default: nothing is exposed unauthenticated; "
        "0.0.0.0 accepts devices from the network.",
    )
    port: int = Field(1883, ge=1, le=65535, description="TCP port devices connect to.")
    max_connections: int = Field(10000, ge=1, description="Concurrent device connections; more wait to be accepted.")
    auth: AuthConfig = Field(
        default_factory=AuthConfig,
        description="password_file (users managed with `gateway passwd`) and allow_anonymous (default: only on "
        "a loopback listener).",
    )
    acl: AclConfig = Field(
        default_factory=AclConfig, description="Topics authenticated devices and operators may publish/subscribe to."
    )
    tls: ListenerTlsConfig = Field(
        default_factory=ListenerTlsConfig, description="TLS for the listener, optionally with client certificates."
    )
    max_queued_per_connection: int = Field(
        1000,
        ge=1,
        description="Messages read from one connection and not yet taken by the pipeline; when reached, the "
        "gateway stops reading that connection (backpressure reaches the device through TCP).",
    )
    stop_timeout: Duration = Field(
        timedelta(seconds=5),
        description="On stop, how long messages the broker already accepted are still handed to the pipeline.",
    )
    max_packet_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=268_435_455,
        description="Largest MQTT packet a device may send: a bigger one closes its connection before it is read "
        "(counted in gateway_broker_protocol_errors_total). Payloads between validation.max_payload_bytes and this "
        "are read and dead-lettered as too_large.",
    )

    @property
    def allow_anonymous(self) -> bool:
        """Whether clients without credentials are accepted: `auth.allow_anonymous`, by default
        true on a loopback listener and false otherwise."""
        return self.auth.allow_anonymous if self.auth.allow_anonymous is not None else is_loopback(self.host)

    @model_validator(mode="after")
    def _check_someone_can_connect(self) -> EmbeddedIngressConfig:
        if not self.allow_anonymous and not self.auth.password_file and not self.tls.ca_file:
            where = "" if is_loopback(self.host) else f" on the exposed address {self.host}"
            raise ValueError(
                f"the listener{where} refuses anonymous clients but has no auth.password_file and no tls.ca_file "
                "(client certificates): no device could connect. Add users with `gateway passwd add`, or set "
                "auth.allow_anonymous: true to accept anyone (not recommended off loopback)"
            )
        return self


class ClientIngressConfig(BaseModel):
    """A subscriber of an external MQTT broker, with a persistent session and manual acknowledgement."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["client"] = "client"
    host: str = Field(min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (usually 8883 with tls: true).")
    client_id: str = Field(
        "iot-gateway",
        min_length=1,
        max_length=65535,
        description="Fixed client id: the broker keeps the session (subscriptions, unacknowledged messages) under it.",
    )
    username: str | None = None
    password: SecretStr | None = None
    protocol: Literal["5", "3.1.1"] = Field("5", description='MQTT version: "5" or "3.1.1".')
    clean_start: bool = Field(False, description="true: discard the broker's session on connect (messages are lost).")
    session_expiry: Duration = Field(
        timedelta(days=1),
        description="MQTT 5: how long the broker keeps the session while the gateway is away (must be > 0 to keep it).",
    )
    shared_group: str | None = Field(
        None,
        min_length=1,
        description="Subscribe as $share/<group>/<filter>, so that several gateways split the messages.",
    )
    qos: Literal[0, 1] = Field(1, description="QoS of the subscriptions. 1: acknowledged only once on the bus.")
    keepalive: Duration = Field(timedelta(seconds=30), description="MQTT keep-alive interval (whole seconds).")
    reconnect_min: Duration = Field(timedelta(milliseconds=500), description="First reconnect delay (jittered).")
    reconnect_max: Duration = Field(timedelta(seconds=30), description="Largest reconnect delay (jittered).")
    tls: bool = Field(False, description="Connect with TLS, verifying the broker's certificate.")
    ca_file: str | None = Field(None, description="CA bundle to verify the broker (tls: true); system CAs if unset.")
    cert_file: str | None = Field(None, description="Client certificate (PEM) presented to the broker (tls: true).")
    key_file: str | None = Field(None, description="Private key (PEM) of cert_file.")
    max_inflight: int = Field(
        1000,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum: QoS 1 messages the broker may send before the gateway acknowledges them. "
        "With MQTT 3.1.1 the broker's own setting applies.",
    )
    stop_timeout: Duration = Field(
        timedelta(seconds=5),
        description="On stop, how long messages already received are still handed to the pipeline.",
    )
    linger: Duration = Field(
        timedelta(milliseconds=2),
        description="At a moderate rate, how long a small socket read, and then a small batch, waits for more "
        "before the next read and the hand-over: fewer reads, bus commits and PUBACKs per message for up to "
        "twice this in latency. A burst never waits. 0s: never. Not applied to QoS 1 with MQTT 3.1.1 or a "
        "max_inflight below 256, where the broker's small window would turn the wait into a rate limit.",
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        # YAML reads `protocol: 5` as a number.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("session_expiry")
    @classmethod
    def _check_session_expiry(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        if value > _MAX_SESSION_EXPIRY:
            raise ValueError(f"must be at most {int(_MAX_SESSION_EXPIRY.total_seconds())} seconds (MQTT 5 limit)")
        if info.data.get("protocol") == "5" and not info.data.get("clean_start") and value.total_seconds() < 1:
            raise ValueError(
                "must be at least 1s with protocol 5 and clean_start: false; with 0 the broker keeps no session "
                "and messages sent while the gateway is away are lost"
            )
        return value

    @field_validator("shared_group")
    @classmethod
    def _check_shared_group(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in "/+#"):
            raise ValueError(f"{value!r} may not contain '/', '+' or '#'")
        return value

    @field_validator("linger")
    @classmethod
    def _check_linger(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= timedelta(milliseconds=100):
            raise ValueError("must be between 0s and 100ms")
        return value

    def effective_linger(self) -> timedelta:
        """`linger`, or zero where the broker's inflight window may be small (see `linger`)."""
        small_window = self.qos == 1 and (self.protocol != "5" or self.max_inflight < 256)
        return timedelta(0) if small_window else self.linger

    @field_validator("keepalive")
    @classmethod
    def _check_keepalive(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= _MAX_KEEPALIVE:
            raise ValueError(f"must be between 1s and {int(_MAX_KEEPALIVE.total_seconds())}s")
        return value

    @field_validator("reconnect_min")
    @classmethod
    def _check_reconnect_min(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be greater than 0")
        return value

    @field_validator("reconnect_max")
    @classmethod
    def _check_reconnect_max(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        low = info.data.get("reconnect_min")
        if isinstance(low, timedelta) and value < low:
            raise ValueError(f"must be at least reconnect_min ({low.total_seconds():g}s)")
        return value

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _check_ca_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not info.data.get("tls"):
            raise ValueError("is set but tls is false; set tls: true to use it")
        return value

    @model_validator(mode="after")
    def _check_client_cert(self) -> ClientIngressConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self

    def subscription_filter(self, topic_filter: str) -> str:
        """The filter actually subscribed to: `$share/<group>/<filter>` with a shared group."""
        return f"$share/{self.shared_group}/{topic_filter}" if self.shared_group else topic_filter


IngressConfig = Annotated[EmbeddedIngressConfig | ClientIngressConfig, Field(discriminator="type")]
