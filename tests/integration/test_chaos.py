"""Chaos tests, processes dying: kill -9 of the gateway, the store down for 30 s, the broker restarted.

Every test counts every message: what the publisher saw acknowledged must be in the store,
once per point identity (VictoriaMetrics keeps one sample per series and timestamp, the
SQLite store one row per point). Each test is bounded in time and uses its own ports.
See also test_chaos_disk.py (a stalled sink, the disk budget, damaged bus files).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.gateway_proc import GatewayProcess
from tests.integration.chaos_gateway import (
    FAST_RETRY,
    assert_all_in_victoria,
    chaos_config,
    finish,
    influx,
    kill9,
    start_publisher,
    wait_for,
)
from tests.integration.chaos_helpers import ResilientPublisher, telemetry
from tests.servers import Mosquitto, VictoriaMetrics, free_port

pytestmark = pytest.mark.integration


def kill_during_run(gw: GatewayProcess, publisher: ResilientPublisher, n: int, kills: int = 3) -> None:
    """kill -9 the gateway after each (kills+1)-th of the run was published, restart it at once."""
    for k in range(1, kills + 1):
        wait_for(lambda k=k: publisher.first_sent >= n * k // (kills + 1), 60, f"publish progress before kill {k}")
        wait_for(lambda: gw.metric("gateway_readings_valid_total") > 0, 20, "the gateway to take readings")
        kill9(gw)
        gw.start()


# -- 1. kill -9 ---------------------------------------------------------------------------


def test_kill_9_three_times_client_mode_loses_and_duplicates_nothing(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    n = 3000
    ingress = {"type": "client", "host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-chaos-kill"}
    gw = GatewayProcess(chaos_config(tmp_path, ingress, influx(victoria.url)))
    gw.start()
    publisher = start_publisher(mosquitto.port, telemetry(n, 5, "kill"), rate=300)
    try:
        kill_during_run(gw, publisher, n)
        finish(publisher, 60)
        assert_all_in_victoria(victoria, n)
    finally:
        publisher.stop()
        assert gw.stop() == 0, gw.logs()[-3000:]
    assert gw.logs().count('"gateway running"') == 4


def test_kill_9_three_times_embedded_mode_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    n = 2000
    port = free_port()
    ingress = {"type": "embedded", "host": "127.0.0.1", "port": port}
    config = chaos_config(tmp_path, ingress, {"type": "sqlite", "runner": FAST_RETRY})
    gw = GatewayProcess(config)
    gw.start()
    publisher = start_publisher(port, telemetry(n, 4, "emb-kill"), rate=250)
    try:
        kill_during_run(gw, publisher, n)
        finish(publisher, 60)
        assert publisher.connections >= 4  # it did lose its broker three times
    finally:
        publisher.stop()
        assert gw.stop() == 0, gw.logs()[-3000:]
    with sqlite3.connect(tmp_path / "data" / "readings.db") as db:
        rows = db.execute("SELECT value FROM readings WHERE field = 'counter'").fetchall()
    counters = sorted(int(r[0]) for r in rows)
    missing = sorted(set(range(n)) - set(counters))
    assert not missing, f"{len(missing)} acknowledged messages are not in the store: {missing[:20]}"
    assert counters == list(range(n))  # one row per point identity


# -- 2. the store down for 30 s -----------------------------------------------------------

OUTAGE_S = 30.0
MAX_RATE = 250.0  # readings per second sent to the store (runner.max_rate)


def test_store_down_30s_everything_arrives_at_no_more_than_max_rate(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    before, during = 500, 3000
    messages = telemetry(before + during, 5, "outage")
    ingress = {"type": "client", "host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-chaos-outage"}
    gw = GatewayProcess(chaos_config(tmp_path, ingress, influx(victoria.url, max_rate=MAX_RATE)))
    gw.start()
    try:
        finish(start_publisher(mosquitto.port, messages[:before], rate=1000), 30)
        assert victoria.wait_for_count('environment_counter{site="chaos"}', before, timeout=30) == before
        wait_for(lambda: gw.metric("gateway_sink_written_total", 'sink="tsdb"') == before, 10, "acks")
        victoria.stop()
        down_at = time.monotonic()
        acked = gw.metric("gateway_bus_published_total", 'topic="telemetry"')  # bus messages, all acked
        finish(start_publisher(mosquitto.port, messages[before:], rate=during / (OUTAGE_S - 5)), OUTAGE_S)
        wait_for(lambda: gw.metric("gateway_readings_valid_total") == before + during, 10, "every reading taken")
        held = gw.metric("gateway_bus_published_total", 'topic="telemetry"') - acked  # single readings share some
        wait_for(lambda: gw.metric("gateway_subscription_backlog", 'subscription="tsdb"') == held, 10, "backlog")
        assert gw.get("/readyz")[0] == 503
        assert gw.metric("gateway_sink_written_total", 'sink="tsdb"') == before
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        victoria.start()
        up_at = time.monotonic()
        total = before + during
        wait_for(lambda: gw.metric("gateway_sink_written_total", 'sink="tsdb"') >= total, 60, "the backlog to drain")
        drain_s = time.monotonic() - up_at
        assert_all_in_victoria(victoria, total)
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]
    # a burst of one second's worth, then the rate: N/R - 1 s at least; and not much slower
    assert drain_s >= during / MAX_RATE * 0.8, f"{during} readings drained in {drain_s:.1f}s: faster than max_rate"
    assert drain_s <= during / MAX_RATE * 1.5 + 5, f"{during} readings took {drain_s:.1f}s to drain"


# -- 3. the broker restarted --------------------------------------------------------------


def test_mosquitto_restart_during_a_client_mode_run_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    n = 3000
    ingress = {
        "type": "client", "host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-chaos-broker",
        "reconnect_min": "100ms", "reconnect_max": "1s",
    }  # fmt: skip
    gw = GatewayProcess(chaos_config(tmp_path, ingress, influx(victoria.url)))
    gw.start()
    publisher = start_publisher(mosquitto.port, telemetry(n, 5, "broker"), rate=300)
    try:
        wait_for(lambda: publisher.first_sent >= n // 3, 30, "a third of the run")
        mosquitto.stop()  # SIGTERM: Mosquitto saves its persistence file, with the gateway's session
        time.sleep(2)
        mosquitto.start()
        finish(publisher, 60)
        assert publisher.connections >= 2
        assert_all_in_victoria(victoria, n)
        assert gw.metric("gateway_broker_reconnects_total") >= 1
        assert gw.metric("gateway_broker_connected") == 1
    finally:
        publisher.stop()
        assert gw.stop() == 0, gw.logs()[-3000:]
