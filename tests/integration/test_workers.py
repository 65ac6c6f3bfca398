"""`gateway run --workers N`: worker processes sharing one `$share` subscription on Mosquitto."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from tests.gateway_proc import GatewayProcess, run_cli, write_config
from tests.integration.test_end_to_end import good_payload, publish, wait_until
from tests.servers import Mosquitto, free_port, free_ports

pytestmark = pytest.mark.integration

SUBS = {
    "store": {"topic": "telemetry", "batch": {"max_latency": "50ms"}},
    "deadletters": {"topic": "deadletter", "dead_letter_topic": None},
}
SINKS = {
    "store": {"type": "sqlite", "subscription": "store"},
    "deadletters": {"type": "deadletter_file", "subscription": "deadletters"},
}


def client_config(tmp_path: Path, port: int) -> tuple[Path, int]:
    """A client-mode config whose admin port and the next one are free: (path, admin port)."""
    ingress = {"type": "client", "host": "127.0.0.1", "port": port, "client_id": "gw-test", "qos": 1}
    config = write_config(tmp_path, ingress=ingress, subscriptions=SUBS, sinks=SINKS)
    data = yaml.safe_load(config.read_text())
    data["admin"]["port"] = admin = free_ports(2)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, admin


def admin_at(port: int) -> GatewayProcess:
    """A handle on the admin endpoint at `port` (a worker's), for `get` and `metric`."""
    probe = GatewayProcess.__new__(GatewayProcess)
    probe.admin_port = port
    return probe


def written(admin: int, workers: int) -> float:
    return sum(admin_at(admin + i).metric("gateway_sink_written_total", 'sink="store"') for i in range(workers))


def ready(port: int) -> bool:
    try:
        return admin_at(port).get("/readyz")[0] == 200
    except OSError:
        return False


def rows(db: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT device_id, time_ns FROM readings WHERE field = 'temperature'").fetchall()


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def test_two_workers_store_every_message_exactly_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config, admin = client_config(tmp_path, mosquitto.port)
    gw = GatewayProcess(config, args=("--workers", "2"))
    gw.start(wait_ready=False)
    n = 2000
    try:
        assert wait_until(lambda: ready(admin) and ready(admin + 1)), gw.logs()[-3000:]
        now = time.time_ns()
        await publish(
            mosquitto.port, [(f"devices/w-{i % 10}/telemetry", good_payload(f"w-{i % 10}", i, now)) for i in range(n)]
        )
        assert wait_until(lambda: written(admin, 2) >= n, 30), gw.logs()[-3000:]
        received = [admin_at(admin + i).metric("gateway_messages_received_total") for i in range(2)]
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]
    assert sum(received) == n and min(received) > 0, received  # both took a share, none was delivered twice
    data = tmp_path / "data"
    stored = rows(data / "worker-0" / "readings.db") + rows(data / "worker-1" / "readings.db")
    assert len(stored) == n
    assert len(set(stored)) == n
    assert (data / "worker-0" / "bus.db").exists() and (data / "worker-1" / "bus.db").exists()


def test_a_failing_worker_stops_the_others_and_the_exit_is_non_zero(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config, admin = client_config(tmp_path, mosquitto.port)
    gw = GatewayProcess(config, args=("--workers", "2"))
    gw.start(wait_ready=False)
    assert gw.proc is not None
    assert wait_until(lambda: ready(admin) and ready(admin + 1)), gw.logs()[-3000:]
    first, second = children(gw.proc.pid)
    os.kill(first, signal.SIGKILL)
    assert gw.proc.wait(30) != 0
    with pytest.raises(ProcessLookupError):  # stopped and reaped by the parent
        os.kill(second, 0)
    assert "worker exited; stopping the others" in gw.logs()


def test_embedded_mode_refuses_several_workers(tmp_path: Path) -> None:
    ingress = {"type": "embedded", "host": "127.0.0.1", "port": free_port()}
    config = write_config(tmp_path, ingress=ingress, subscriptions=SUBS, sinks=SINKS)
    result = run_cli("run", "--config", str(config), "--workers", "2")
    assert result.returncode == 2
    assert "--workers 2 needs the client ingress" in result.stderr
