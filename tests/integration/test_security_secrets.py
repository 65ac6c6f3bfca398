"""A real `gateway run` with secrets from the environment: the admin token guards /readyz, and
neither the token nor any password shows up in logs, check-config output or metrics."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiomqtt
import pytest
import yaml
from argon2 import PasswordHasher

from gateway.security.passwords import PasswordFile
from tests.gateway_proc import GatewayProcess, run_cli, write_config
from tests.servers import free_port

pytestmark = pytest.mark.integration
TOKEN = "admin-token-Zq8r1vK3pW6m"
DEVICE_PASSWORD = "device-pw-Hn4c7Tx0"
WRONG_PASSWORD = "wrong-pw-Lb5s2Ye9"


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_secrets_never_reach_logs_output_or_metrics(tmp_path: Path) -> None:
    users = PasswordFile(tmp_path / "passwd", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    users.set("sensor-1", DEVICE_PASSWORD, "device")
    users.save()
    port = free_port()
    ingress = {"type": "embedded", "port": port, "auth": {"password_file": str(users.path), "allow_anonymous": False}}
    subs = {"store": {"topic": "telemetry"}, "dl": {"topic": "deadletter", "dead_letter_topic": None}}
    sinks = {
        "store": {"type": "sqlite", "subscription": "store"},
        "dl": {"type": "deadletter_file", "subscription": "dl"},
    }
    config = write_config(tmp_path, ingress, sinks, subs)
    data = yaml.safe_load(config.read_text())
    data["log"]["level"] = "debug"
    config.write_text(yaml.safe_dump(data))
    env = {"GATEWAY_ADMIN__TOKEN": TOKEN}

    check = run_cli("check-config", "--config", str(config), env=env)
    assert check.returncode == 0, check.stderr
    gw = GatewayProcess(config, env)
    gw.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert gw.proc is not None and gw.proc.poll() is None, gw.logs()[-2000:]
            try:
                if get(gw.admin_port, "/readyz", TOKEN)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, gw.logs()[-2000:]
            await asyncio.sleep(0.1)
        assert get(gw.admin_port, "/readyz")[0] == 401
        assert get(gw.admin_port, "/readyz", "not-the-token-at-all")[0] == 401
        assert get(gw.admin_port, "/healthz")[0] == 200
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="sec-s1", username="sensor-1", password=WRONG_PASSWORD
            ):
                pass
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="sec-s1", username="sensor-1", password=DEVICE_PASSWORD
        ) as c:
            await c.publish("devices/sensor-1/telemetry", b'{"device_id": "sensor-1", "temperature": 20.5}', qos=1)
            await c.publish("devices/sensor-1/telemetry", b'{"device_id": "sensor-1", "temperature": 900}', qos=1)
            await c.publish("devices/sensor-2/telemetry", b'{"device_id": "sensor-2", "temperature": 1}', qos=1)
        deadline = time.monotonic() + 10
        while gw.metric("gateway_sink_written_total") < 2:  # the reading and the out_of_range dead letter
            assert time.monotonic() < deadline, gw.logs()[-2000:]
            await asyncio.sleep(0.1)
        metrics = get(gw.admin_port, "/metrics")[1].decode()
        assert gw.metric("gateway_auth_failures_total", 'reason="bad_credentials"') == 1
        assert gw.metric("gateway_acl_denied_total", 'action="publish"') == 1
        assert gw.metric("gateway_admin_unauthorized_total") == 2
    finally:
        assert gw.stop() == 0
    logs = gw.logs()
    assert "publish refused by the ACL" in logs and "connection refused" in logs and "stopped cleanly" in logs
    for secret in (TOKEN, DEVICE_PASSWORD, WRONG_PASSWORD):
        for text in (logs, check.stdout, check.stderr, metrics):
            assert secret not in text
