"""Ingress configuration: defaults, the `type` discriminator, durations, and every refusal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.core.metrics import Metrics
from gateway.ingress.client import ClientIngress
from gateway.ingress.config import ClientIngressConfig, EmbeddedIngressConfig, IngressConfig
from gateway.ingress.embedded import EmbeddedIngress

ADAPTER: TypeAdapter[EmbeddedIngressConfig | ClientIngressConfig] = TypeAdapter(IngressConfig)


def client(**values: Any) -> ClientIngressConfig:
    return ClientIngressConfig.model_validate({"host": "broker.local", **values})


def error_of(data: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python(data)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"], errors[0]["msg"]


def test_embedded_defaults_listen_on_loopback_only() -> None:
    config = ADAPTER.validate_python({"type": "embedded"})
    assert isinstance(config, EmbeddedIngressConfig)
    assert (config.host, config.port, config.allow_anonymous) == ("127.0.0.1", 1883, True)
    assert config.max_connections == 10000 and config.max_queued_per_connection == 1000
    assert config.stop_timeout == timedelta(seconds=5)


def test_client_defaults_keep_a_persistent_mqtt5_session_with_qos1() -> None:
    config = ADAPTER.validate_python({"type": "client", "host": "broker.local"})
    assert isinstance(config, ClientIngressConfig)
    assert (config.client_id, config.protocol, config.qos, config.clean_start) == ("iot-gateway", "5", 1, False)
    assert config.session_expiry == timedelta(days=1)
    assert (config.keepalive, config.reconnect_min, config.reconnect_max) == (
        timedelta(seconds=30),
        timedelta(milliseconds=500),
        timedelta(seconds=30),
    )
    assert config.shared_group is None and config.tls is False and config.max_inflight == 1000


def test_durations_accept_operator_units() -> None:
    config = client(session_expiry="2h", keepalive="45s", reconnect_min="250ms", reconnect_max="1m", stop_timeout=2)
    assert config.session_expiry == timedelta(hours=2)
    assert config.keepalive == timedelta(seconds=45)
    assert (config.reconnect_min, config.reconnect_max) == (timedelta(milliseconds=250), timedelta(minutes=1))
    assert config.stop_timeout == timedelta(seconds=2)


def test_protocol_written_as_a_yaml_number_is_accepted() -> None:
    assert client(protocol=5).protocol == "5"
    assert client(protocol="3.1.1").protocol == "3.1.1"
    loc, msg = error_of({"type": "client", "host": "h", "protocol": 4})
    assert loc == ("client", "protocol") and "'5'" in msg


def test_password_is_secret() -> None:
    config = client(username="gw", password="hunter2")
    assert config.password is not None and config.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


def test_shared_group_prefixes_every_filter() -> None:
    config = client(shared_group="gateways")
    assert config.subscription_filter("devices/+/telemetry") == "$share/gateways/devices/+/telemetry"
    assert client().subscription_filter("devices/#") == "devices/#"
    ingress = ClientIngress(config, ["a/+", "b/#"], Metrics())
    assert ingress.filters == ["$share/gateways/a/+", "$share/gateways/b/#"]
    assert not ingress.connected


def test_constructors_do_no_io() -> None:
    ingress = EmbeddedIngress(EmbeddedIngressConfig(port=1), Metrics())
    assert not ingress.connected and ingress.name == "embedded"
    assert ingress.address == "127.0.0.1:1"
    assert EmbeddedIngress(EmbeddedIngressConfig(host="::1"), Metrics()).address == "[::1]:1883"


E = {"type": "embedded"}
C = {"type": "client", "host": "h"}


@pytest.mark.parametrize(
    ("data", "where", "fragment"),
    [
        ({"type": "kafka"}, (), "'embedded', 'client'"),
        ({**E, "port": 0}, ("embedded", "port"), "greater than or equal to 1"),
        ({**E, "port": 65536}, ("embedded", "port"), "less than or equal to 65535"),
        ({**E, "bind": "0.0.0.0"}, ("embedded", "bind"), "Extra inputs are not permitted"),
        ({**E, "max_queued_per_connection": 0}, ("embedded", "max_queued_per_connection"), "greater than or equal"),
        ({"type": "client"}, ("client", "host"), "Field required"),
        ({**C, "qos": 2}, ("client", "qos"), "0 or 1"),
        ({**C, "client_id": ""}, ("client", "client_id"), "at least 1 character"),
        ({**C, "session_expiry": 0}, ("client", "session_expiry"), "keeps no session"),
        ({**C, "session_expiry": "8000w"}, ("client", "session_expiry"), "at most 4294967295 seconds"),
        ({**C, "shared_group": "a/b"}, ("client", "shared_group"), "may not contain"),
        ({**C, "shared_group": ""}, ("client", "shared_group"), "at least 1 character"),
        ({**C, "keepalive": "0s"}, ("client", "keepalive"), "between 1s and 65535s"),
        ({**C, "keepalive": "soon"}, ("client", "keepalive"), "not a duration"),
        ({**C, "reconnect_min": 0}, ("client", "reconnect_min"), "greater than 0"),
        ({**C, "reconnect_min": "5s", "reconnect_max": "1s"}, ("client", "reconnect_max"), "reconnect_min (5s)"),
        ({**C, "ca_file": "/ca.pem"}, ("client", "ca_file"), "tls is false"),
        ({**C, "max_inflight": 70000}, ("client", "max_inflight"), "65535"),
    ],
)
def test_refusals_name_the_key(data: dict[str, Any], where: tuple[str, ...], fragment: str) -> None:
    loc, msg = error_of(data)
    assert loc == where
    assert fragment in msg


def test_session_expiry_zero_is_fine_when_no_session_is_wanted() -> None:
    assert client(session_expiry=0, clean_start=True).session_expiry == timedelta(0)
    assert client(session_expiry=0, protocol="3.1.1").session_expiry == timedelta(0)


def test_linger_applies_only_where_the_brokers_window_is_known_to_be_wide() -> None:
    two_ms = timedelta(milliseconds=2)
    assert client().effective_linger() == two_ms  # QoS 1, MQTT 5, max_inflight 1000
    assert client(qos=0, protocol="3.1.1").effective_linger() == two_ms  # QoS 0: no window
    assert client(protocol="3.1.1").effective_linger() == timedelta(0)  # the broker's window
    assert client(max_inflight=100).effective_linger() == timedelta(0)
    assert client(linger="0s").effective_linger() == timedelta(0)
    with pytest.raises(ValidationError, match="between 0s and 100ms"):
        client(linger="1s")
