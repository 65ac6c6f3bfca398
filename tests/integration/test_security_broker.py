"""The embedded broker's authentication, ACL and TLS, with real aiomqtt clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from argon2 import PasswordHasher

from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.config import EmbeddedIngressConfig
from gateway.ingress.embedded import EmbeddedIngress
from gateway.security.identity import AuthenticatedMessage
from gateway.security.passwords import PasswordFile
from tests.security_certs import make_ca, make_cert
from tests.servers import free_port

pytestmark = pytest.mark.integration
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # test speed; the CLI uses the defaults


def password_file(tmp_path: Path) -> Path:
    users = PasswordFile(tmp_path / "passwd", FAST)
    users.set("dev-a", "secret-a-123", "device")
    users.set("dev-b", "secret-b-456", "device")
    users.set("ops", "operator-pw-789", "operator")
    users.save()
    return users.path


@contextlib.asynccontextmanager
async def broker(config: dict[str, Any]) -> AsyncIterator[tuple[EmbeddedIngress, Metrics, list[RawMessage]]]:
    metrics = Metrics()
    ingress = EmbeddedIngress(EmbeddedIngressConfig.model_validate(config), metrics)
    got: list[RawMessage] = []

    async def handler(message: RawMessage) -> None:
        got.append(message)

    task = asyncio.create_task(ingress.run(handler))
    await asyncio.wait_for(ingress.wait_started(), 5)
    try:
        yield ingress, metrics, got
    finally:
        await asyncio.wait_for(ingress.stop(), 10)
        await asyncio.wait_for(task, 5)


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def wait_for(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_unauthenticated_and_wrong_password_connections_are_refused(tmp_path: Path) -> None:
    port = free_port()
    cfg = {"port": port, "auth": {"password_file": str(password_file(tmp_path)), "allow_anonymous": False}}
    async with broker(cfg) as (_, metrics, got):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="sec-anon"):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="sec-wrong", username="dev-a", password="nope"):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="sec-ghost", username="ghost", password="x"):
                pass
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="sec-ok", username="dev-a", password="secret-a-123"
        ) as c:
            await c.publish("devices/dev-a/telemetry", b"{}", qos=1)
        await wait_for(lambda: len(got) == 1)
    assert sample(metrics, "gateway_auth_failures_total", {"reason": "anonymous"}) == 1
    assert sample(metrics, "gateway_auth_failures_total", {"reason": "bad_credentials"}) == 2
    message = got[0]
    assert isinstance(message, AuthenticatedMessage) and message.identity is not None
    assert (message.identity.name, message.identity.role, message.identity.method) == ("dev-a", "device", "password")


async def test_a_device_cannot_publish_or_subscribe_to_another_devices_topics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    cfg = {"port": port, "auth": {"password_file": str(password_file(tmp_path))}}
    caplog.set_level(logging.WARNING, logger="gateway.security")
    async with broker(cfg) as (_, metrics, got):
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="acl-a", username="dev-a", password="secret-a-123"
        ) as a:
            result = await a.subscribe("devices/dev-b/#", qos=1)
            assert [int(getattr(r, "value", r)) for r in result] == [0x80]
            await a.publish("devices/dev-b/telemetry", b'{"forged": true}', qos=1)
            await a.publish("devices/dev-a/telemetry", b'{"own": true}', qos=1)
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="acl-ops", username="ops", password="operator-pw-789"
        ) as o:
            await o.publish("devices/dev-b/cmd", b"reboot", qos=1)
        await wait_for(lambda: len(got) == 2)
    assert [(m.topic, m.payload) for m in got] == [
        ("devices/dev-a/telemetry", b'{"own": true}'),
        ("devices/dev-b/cmd", b"reboot"),
    ]
    assert sample(metrics, "gateway_acl_denied_total", {"action": "publish"}) == 1
    assert sample(metrics, "gateway_acl_denied_total", {"action": "subscribe"}) == 1
    refused = [r for r in caplog.records if r.getMessage() == "publish refused by the ACL"]
    assert len(refused) == 1 and getattr(refused[0], "client_id", None) == "acl-a"
    assert "secret-a-123" not in caplog.text


async def test_a_client_id_in_use_by_another_identity_is_refused_without_disconnecting_it(tmp_path: Path) -> None:
    port = free_port()
    cfg = {"port": port, "auth": {"password_file": str(password_file(tmp_path))}}
    async with broker(cfg) as (_, metrics, got):
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="own-1", username="dev-a", password="secret-a-123"
        ) as a:
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1", port, identifier="own-1", username="dev-b", password="secret-b-456"
                ):
                    pass
            await a.publish("devices/dev-a/telemetry", b"still-here", qos=1)
        await wait_for(lambda: len(got) == 1)
    assert sample(metrics, "gateway_auth_failures_total", {"reason": "session_owner"}) == 1


def client_tls(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


async def test_tls_against_the_wrong_ca_fails_and_a_client_certificate_names_the_device(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "gw-ca")
    other_ca = make_ca(tmp_path, "other-ca")
    server = make_cert(tmp_path, ca, "gateway-server", server=True)
    device = make_cert(tmp_path, ca, "sensor-9")
    rogue = make_cert(tmp_path, other_ca, "sensor-7")
    port = free_port()
    tls = {"enabled": True, "cert_file": str(server[0]), "key_file": str(server[1]), "ca_file": str(ca[0])}
    cfg = {"port": port, "tls": {**tls, "require_client_cert": True}, "auth": {"allow_anonymous": False}}
    async with broker(cfg) as (_, metrics, got):
        with pytest.raises(aiomqtt.MqttError):  # the client does not trust the gateway's CA
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="tls-1", timeout=3, tls_context=client_tls(other_ca[0], device)
            ):
                pass
        with pytest.raises(aiomqtt.MqttError):  # the gateway does not trust the client's CA
            rogue_tls = client_tls(ca[0], rogue)
            async with aiomqtt.Client("127.0.0.1", port, identifier="tls-2", timeout=3, tls_context=rogue_tls):
                pass
        with pytest.raises(aiomqtt.MqttError):  # no client certificate at all
            async with aiomqtt.Client("127.0.0.1", port, identifier="tls-3", timeout=3, tls_context=client_tls(ca[0])):
                pass
        async with aiomqtt.Client("127.0.0.1", port, identifier="tls-4", tls_context=client_tls(ca[0], device)) as c:
            await c.publish("devices/sensor-8/telemetry", b"forged", qos=1)
            await c.publish("devices/sensor-9/telemetry", b"{}", qos=1)
        await wait_for(lambda: len(got) == 1)
    message = got[0]
    assert isinstance(message, AuthenticatedMessage) and message.identity is not None
    assert (message.topic, message.identity.name, message.identity.method) == (
        "devices/sensor-9/telemetry",
        "sensor-9",
        "certificate",
    )
    assert sample(metrics, "gateway_acl_denied_total", {"action": "publish"}) == 1
