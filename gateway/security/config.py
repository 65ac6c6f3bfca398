"""Configuration of the gateway's security features (no I/O here; files are read at start).

`ingress.auth`, `ingress.acl` and `ingress.tls` belong to the embedded broker
(`EmbeddedIngressConfig`); `security` (root) holds the gateway-side checks that apply to
every ingress (`Guard`).
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PLACEHOLDERS = ("{username}",)


class AuthConfig(BaseModel):
    """Who may connect to the embedded broker."""

    model_config = ConfigDict(extra="forbid")

    password_file: str | None = Field(
        None,
        description="File of `username:role:argon2-hash` lines (manage it with `gateway passwd`). "
        "Unset: no password authentication.",
    )
    allow_anonymous: bool | None = Field(
        None,
        description="Clients without credentials. Unset: allowed only when the listener is on loopback. "
        "Anonymous clients are not restricted by the ACL.",
    )


class AclConfig(BaseModel):
    """What an authenticated client may publish and subscribe to (MQTT filters, `{username}` placeholder).

    Devices get `publish`/`subscribe`; operators get `operator_publish`/`operator_subscribe`.
    A filter may use `+` and `#`; `{username}` is replaced by the client's authenticated
    identity (its username, or the CN of its client certificate).
    """

    model_config = ConfigDict(extra="forbid")

    publish: list[str] = Field(default_factory=lambda: ["devices/{username}/#"])
    subscribe: list[str] = Field(default_factory=lambda: ["devices/{username}/#"])
    operator_publish: list[str] = Field(default_factory=lambda: ["#"])
    operator_subscribe: list[str] = Field(default_factory=lambda: ["#"])

    @field_validator("publish", "subscribe", "operator_publish", "operator_subscribe")
    @classmethod
    def _check_filters(cls, filters: list[str]) -> list[str]:
        for f in filters:
            problem = filter_problem(f.replace("{username}", "x"))
            if problem:
                raise ValueError(f"{f!r}: {problem}")
            if "{" in f.replace("{username}", "") or "}" in f.replace("{username}", ""):
                raise ValueError(f"{f!r}: the only placeholder is {{username}}, as a whole level")
            if any("{username}" in level and level != "{username}" for level in f.split("/")):
                raise ValueError(f"{f!r}: {{username}} must be a whole topic level")
        return filters


class ListenerTlsConfig(BaseModel):
    """TLS for the embedded broker's listener."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    cert_file: str | None = Field(None, description="PEM certificate (chain) of the listener.")
    key_file: str | None = Field(None, description="PEM private key of the listener.")
    ca_file: str | None = Field(None, description="CA bundle that signs client certificates.")
    require_client_cert: bool = Field(
        False, description="true: every client must present a certificate signed by ca_file; its CN is the device id."
    )

    @model_validator(mode="after")
    def _check(self) -> ListenerTlsConfig:
        if self.enabled and (not self.cert_file or not self.key_file):
            raise ValueError("cert_file and key_file are required when enabled is true")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("require_client_cert needs ca_file (the CA that signs client certificates)")
        if not self.enabled and (self.cert_file or self.key_file or self.ca_file or self.require_client_cert):
            raise ValueError("TLS options are set but enabled is false; set enabled: true")
        return self


class RateLimitConfig(BaseModel):
    """A token bucket per device: `messages_per_second` sustained, bursts of `burst`."""

    model_config = ConfigDict(extra="forbid")

    messages_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)
    max_devices: int = Field(
        100_000,
        ge=1,
        description="Buckets kept (least recently used evicted): bounds memory whatever the number of device ids.",
    )


class SecurityConfig(BaseModel):
    """Gateway-side checks on every message, before decoding (see `gateway.security.guard`)."""

    model_config = ConfigDict(extra="forbid")

    max_topic_levels: int = Field(32, ge=1, le=65535, description="Deeper topics are dead-lettered (`too_deep`).")
    rate_limit: RateLimitConfig | None = Field(
        None, description="Per-device token bucket; excess messages are dead-lettered (`rate_limited`). Unset: off."
    )


def filter_problem(topic_filter: str) -> str | None:
    """Why an MQTT topic filter is malformed, or None."""
    if not topic_filter:
        return "an empty filter"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses; anything else (0.0.0.0, names) counts as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
