"""Chaos tests, the disk: a stalled sink under load (RSS bound, disk budget policies), damaged bus files.

Counting as in test_chaos.py: every message is accounted for (stored, or dropped and counted).
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import orjson
import pytest
import yaml

from gateway.ingest import SINGLES_CHUNK
from tests.gateway_proc import GatewayProcess
from tests.integration.chaos_gateway import (
    assert_all_in_victoria,
    chaos_config,
    finish,
    influx,
    kill9,
    metric_or_none,
    start_publisher,
    wait_for,
)
from tests.integration.chaos_helpers import StalledServer, file_size, rss_mib, telemetry
from tests.servers import Mosquitto, VictoriaMetrics, free_port, wait_for_port

pytestmark = pytest.mark.integration


# -- 4. a stalled sink under sustained load -----------------------------------------------

RSS_BOUND_MIB = 300  # stated in the README ("Failure behaviour")


def test_stalled_sink_rss_stays_bounded_while_the_disk_backlog_grows(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The backlog grows on disk far beyond the subscription's in-memory window, RSS stays flat."""
    n = 100_000
    window = 5_000  # max_outstanding_messages: the in-memory window of the durable bus
    stalled = StalledServer()
    ingress = {"type": "client", "host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-chaos-stall"}
    config = chaos_config(tmp_path, ingress, influx(stalled.url))
    data = yaml.safe_load(config.read_text())
    data["bus"]["subscriptions"]["tsdb"]["max_outstanding_messages"] = window
    # ... and about as many single readings in bytes: a bus message may carry up to 64 of them
    data["bus"]["subscriptions"]["tsdb"]["max_outstanding_bytes"] = window * 700
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    gw = GatewayProcess(config)
    gw.start(wait_ready=False)  # never ready: its sink does not answer
    wait_for(lambda: metric_or_none(gw, "gateway_broker_connected") == 1, 20, "the gateway to connect")
    assert gw.proc is not None
    bus_db = tmp_path / "data" / "bus.db"
    publisher = start_publisher(mosquitto.port, telemetry(n, 50, "stall"), rate=5000, timeout=150)
    rss: list[float] = []
    sizes: list[int] = []
    try:
        while publisher.is_alive():
            rss.append(rss_mib(gw.proc.pid))
            sizes.append(file_size(bus_db))
            time.sleep(0.5)
        finish(publisher, 1)
        wait_for(lambda: gw.metric("gateway_readings_valid_total") == n, 30, "every reading to be taken")
        published = gw.metric("gateway_bus_published_total", 'topic="telemetry"')
        wait_for(lambda: backlog(gw) == published, 5, f"all {published} bus messages held")
        assert gw.metric("gateway_publish_blocked_seconds_total") == 0  # a full window does not hold the ingress
        rss.append(rss_mib(gw.proc.pid))
        sizes.append(file_size(bus_db))
        assert stalled.accepted >= 1 and gw.metric("gateway_sink_written_total", 'sink="tsdb"') == 0
        assert max(rss) < RSS_BOUND_MIB, f"RSS peaked at {max(rss):.0f} MiB"
        assert sizes[-1] > sizes[len(sizes) // 4] > 0, f"the on-disk backlog did not grow: {sizes}"
        assert gw.metric("gateway_bus_stored_bytes") > 0
    finally:
        publisher.stop()
        kill9(gw)
        stalled.close()


def backlog(gw: GatewayProcess) -> float:
    return gw.metric("gateway_subscription_backlog", 'subscription="tsdb"')


SMALL_DISK = 300_000  # bus.sqlite.max_bytes: room for about a thousand of these readings


def test_stalled_sink_full_disk_budget_drop_oldest_drops_and_counts(tmp_path: Path, mosquitto: Mosquitto) -> None:
    n = 5000
    stalled = StalledServer()
    ingress = {"type": "client", "host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-chaos-drop"}
    bus = {"max_bytes": SMALL_DISK, "full_policy": "drop_oldest"}
    gw = GatewayProcess(chaos_config(tmp_path, ingress, influx(stalled.url), bus=bus))
    gw.start(wait_ready=False)
    try:
        wait_for(lambda: metric_or_none(gw, "gateway_broker_connected") == 1, 20, "the gateway to connect")
        finish(start_publisher(mosquitto.port, telemetry(n, 5, "drop"), rate=3000), 30)
        wait_for(lambda: gw.metric("gateway_readings_valid_total") == n, 20, "every message to be taken")
        dropped = gw.metric("gateway_bus_dropped_oldest_total")  # bus messages, as the backlog counts them
        published = gw.metric("gateway_bus_published_total", 'topic="telemetry"')
        assert dropped > published / 2, f"only {dropped} of {published} dropped"
        # the backlog gauge is refreshed every 0.5 s (gateway.admin.server.BEAT_S), the counters at once
        wait_for(lambda: backlog(gw) + dropped == published, 5, f"backlog + {dropped} dropped == {published}")
        assert 0 < gw.metric("gateway_bus_unacked_bytes") <= SMALL_DISK
        assert gw.metric("gateway_publish_blocked_seconds_total") == 0  # drop_oldest never blocks the ingress
        assert "bus disk bound reached" in gw.logs()
    finally:
        kill9(gw)
        stalled.close()


def test_stalled_sink_full_disk_budget_block_holds_the_ingress_and_drops_nothing(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    n = 5000
    victoria.stop()
    ingress = {"type": "client", "host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-chaos-block"}
    bus = {"max_bytes": SMALL_DISK, "full_policy": "block"}
    gw = GatewayProcess(chaos_config(tmp_path, ingress, influx(victoria.url), bus=bus))
    gw.start(wait_ready=False)
    try:
        wait_for(lambda: metric_or_none(gw, "gateway_broker_connected") == 1, 20, "the gateway to connect")
        finish(start_publisher(mosquitto.port, telemetry(n, 5, "block"), rate=3000), 30)  # Mosquitto holds them
        wait_for(lambda: gw.metric("gateway_publish_blocked_seconds_total") > 1, 20, "the ingress to block")
        taken = gw.metric("gateway_readings_valid_total")
        assert 0 < taken < n / 2, f"{taken} readings taken with a disk budget for about a thousand"
        # may exceed by one message: up to SINGLES_CHUNK single readings, each under 300 stored bytes
        assert gw.metric("gateway_bus_unacked_bytes") <= SMALL_DISK + SINGLES_CHUNK * 300
        assert gw.metric("gateway_bus_dropped_oldest_total") == 0
        victoria.start()
        assert_all_in_victoria(victoria, n)
        assert gw.metric("gateway_bus_dropped_oldest_total") == 0
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]


# -- 5. damaged bus files on start --------------------------------------------------------


def backlog_then_stop(tmp_path: Path, n: int, how: str) -> Path:
    """Run a gateway whose store refuses connections, take `n` readings (kept in bus.db), stop it
    (`how`: "kill" for kill -9, "term" for a clean stop that checkpoints the WAL); return bus.db."""
    port = free_port()
    ingress = {"type": "embedded", "host": "127.0.0.1", "port": port}
    config = chaos_config(tmp_path, ingress, influx(f"http://127.0.0.1:{free_port()}"))  # nothing listens
    data = yaml.safe_load(config.read_text())
    data["shutdown"]["drain_timeout"] = "500ms"
    # One bus message per reading (an ordered subscription gets one per publish, see
    # gateway.ingest), so that sequence number k holds counter k - 1: these tests are of damage
    # to the bus's file, which is the same whatever a message holds.
    data["bus"]["subscriptions"]["tsdb"]["ordering"] = True
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    gw = GatewayProcess(config)
    gw.start(wait_ready=False)
    wait_for_port(port, 20)
    try:
        finish(start_publisher(port, telemetry(n, 4, "torn"), rate=2000), 60)
        wait_for(lambda: gw.metric("gateway_subscription_backlog", 'subscription="tsdb"') == n, 20, "backlog")
    finally:
        if how == "kill":
            kill9(gw)
        else:
            assert gw.stop() == 0, gw.logs()[-3000:]
    return tmp_path / "data" / "bus.db"


def restart_with_a_working_store(tmp_path: Path, first_new: int, m: int, expect_written: int) -> GatewayProcess:
    """Start again with the SQLite store as `tsdb`, publish `m` new readings; return the (stopped) gateway."""
    port = free_port()
    config = chaos_config(tmp_path, {"type": "embedded", "host": "127.0.0.1", "port": port}, {"type": "sqlite"})
    gw = GatewayProcess(config)
    gw.start()
    try:
        fresh = telemetry(first_new + m, 4, "torn")[first_new:]
        finish(start_publisher(port, fresh, rate=2000), 30)
        wait_for(lambda: gw.metric("gateway_sink_written_total", 'sink="tsdb"') >= expect_written, 30, "the store")
    finally:
        assert gw.stop() == 0, gw.logs()[-3000:]
    return gw


def stored_counters(tmp_path: Path) -> list[int]:
    with sqlite3.connect(tmp_path / "data" / "readings.db") as db:
        return sorted(int(r[0]) for r in db.execute("SELECT value FROM readings WHERE field = 'counter'"))


def messages_sqlite_can_read(bus_db: Path, scratch: Path) -> int:
    """Messages in a copy of the bus database as SQLite itself recovers it (the ground truth)."""
    scratch.mkdir()
    for suffix in ("", "-wal"):
        src = Path(f"{bus_db}{suffix}")
        if src.exists():
            Path(f"{scratch / bus_db.name}{suffix}").write_bytes(src.read_bytes())
    with sqlite3.connect(scratch / bus_db.name) as db:
        return int(db.execute("SELECT coalesce(sum(count), 0) FROM segments").fetchone()[0])


def test_torn_wal_tail_is_reported_and_every_earlier_commit_delivered(tmp_path: Path) -> None:
    n, m = 1000, 100
    bus_db = backlog_then_stop(tmp_path, n, "kill")
    wal = Path(f"{bus_db}-wal")
    header = wal.read_bytes()[:32]
    frame = 24 + int.from_bytes(header[8:12], "big")
    frames = (wal.stat().st_size - 32) // frame
    assert frames >= 2, "the backlog should still be in the write-ahead log after kill -9"
    with wal.open("r+b") as f:  # the last frame torn in half, as by a crash in the middle of its write
        f.truncate(32 + (frames - 1) * frame + frame // 2)
    kept = messages_sqlite_can_read(bus_db, tmp_path / "scratch")
    assert 0 < kept <= n

    gw = restart_with_a_working_store(tmp_path, n, m, kept + m)
    logs = gw.logs()
    assert "ends in a partial frame" in logs
    counters = stored_counters(tmp_path)
    assert counters == list(range(kept)) + list(range(n, n + m)), f"{len(counters)} stored, {kept}+{m} expected"


def test_damaged_page_is_moved_aside_reported_and_the_rest_delivered(tmp_path: Path) -> None:
    n, m = 2000, 100
    bus_db = backlog_then_stop(tmp_path, n, "term")
    assert not Path(f"{bus_db}-wal").exists() or Path(f"{bus_db}-wal").stat().st_size == 0
    page = 16384
    pages = bus_db.stat().st_size // page
    assert pages >= 8, f"bus.db has only {pages} pages"
    with bus_db.open("r+b") as f:  # a page in the middle overwritten (a misdirected or torn write)
        f.seek(pages // 2 * page)
        f.write(bytes(range(256)) * (page // 256))

    gw = restart_with_a_working_store(tmp_path, n, m, m)
    logs = gw.logs()
    assert "bus database was damaged: moved aside and recovered" in logs, logs[-3000:]
    report = next(orjson.loads(line) for line in logs.splitlines() if "moved aside and recovered" in line)
    # sequence numbers; message k (counter k) got sequence number k + 1. Both the pages SQLite
    # could not read and data it read but the bus could not decode (a page inside a segment's
    # blob) are reported, as "sequence numbers ..." lists of ranges and single numbers.
    lost: set[int] = set()
    for line in report["lost"] if isinstance(report["lost"], list) else []:
        listed = line.partition("sequence numbers")[2]
        for lo, hi in re.findall(r"(\d+)(?:\.\.(\d+|\(end\)))?", listed):
            lost.update(range(int(lo), (n if hi == "(end)" else int(hi or lo)) + 1))
    assert report["messages_recovered"] == n - len(lost)
    assert Path(report["moved_to"]).exists()
    counters = stored_counters(tmp_path)
    expected = [c for c in range(n) if c + 1 not in lost] + list(range(n, n + m))
    assert counters == expected, f"{len(counters)} stored; {n} - {len(lost)} reported lost + {m} expected"
