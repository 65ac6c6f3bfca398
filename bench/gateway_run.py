"""The gateway run: `gateway run` as a subprocess on the shipped config (client mode →
VictoriaMetrics, or embedded mode → SQLite), driven by the simulator and observed through
its /metrics (polled every `POLL_S`) and /proc. The stored count is verified in the store
after the gateway stopped (drained); a run that stalls for 20 s or outlasts its time limit
is returned with `ok=False`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from bench.measure import MetricsSnapshot, histogram_quantile, proc_sample
from bench.procs import Env, RunResult, Sim, device_prefix, run_timeout, vm_match, workdir_for
from bench.workloads import MEASURE_FIELD, Workload, client_config, embedded_config
from tests.gateway_proc import GatewayProcess
from tests.servers import env_without_proxies, free_port

POLL_S = 0.1


def run_gateway(env: Env, w: Workload, embedded: bool, system: str = "gateway") -> RunResult:
    """`gateway run` (client mode → VictoriaMetrics, or embedded mode → SQLite) on the shipped config."""
    wd = workdir_for(env, system, w)
    prefix = device_prefix(system, w)
    admin = free_port()
    if embedded:
        mqtt_port = free_port()
        config = embedded_config(wd, mqtt_port, admin)
    else:
        mqtt_port = env.mosquitto.port
        config = client_config(wd, mqtt_port, env.victoria.url, f"bench-{prefix}{time.time_ns()}", admin)
    gw = GatewayProcess(config, env=env_without_proxies())
    gw.start()
    try:
        result = _drive(env, gw, w, mqtt_port, prefix, "store" if embedded else "tsdb", system, wd)
    finally:
        code = gw.stop(timeout=90)
    if embedded:
        result.stored = _sqlite_count(wd / "data" / "readings.db", prefix)
    else:
        result.stored = env.victoria.wait_for_count(vm_match(prefix), w.readings, timeout=30)
    if result.stored != w.readings or code != 0:
        result.ok = False
        result.note = (result.note + f" stored {result.stored} of {w.readings}; exit {code}").strip()
    return result


def _drive(
    env: Env, gw: GatewayProcess, w: Workload, port: int, prefix: str, sink: str, system: str, wd: Path
) -> RunResult:
    assert gw.proc is not None
    pid, url = gw.proc.pid, f"http://127.0.0.1:{gw.admin_port}/metrics"
    stop_profiler = env.profiler(pid) if env.profiler is not None else None
    before = proc_sample(pid)
    sim = Sim(w, port, prefix, wd)
    started = time.monotonic()
    first: float | None = None
    last_change, last_written, last_log = started, -1.0, started
    ok, note = True, ""
    while True:
        snap = MetricsSnapshot.scrape(url)
        now = time.monotonic()
        received = snap.total("gateway_messages_received_total")
        written = snap.total("gateway_sink_written_total", sink=sink)
        if first is None and received > 0:
            first = now - POLL_S / 2  # the midpoint of the interval it happened in
        if written >= w.readings:
            break
        if written != last_written:
            last_change, last_written = now, written
        if now - last_change > 20 or now - started > run_timeout(w):
            ok, note = False, f"stalled at {written:.0f} of {w.readings} readings written"
            break
        if now - last_log >= 2:
            last_log = now
            env.log(f"    {system} {w.name}: received {received:,.0f} msgs, stored {written:,.0f} readings")
        time.sleep(POLL_S)
    done = time.monotonic()
    after = proc_sample(pid)
    if stop_profiler is not None:
        stop_profiler()
    buckets = snap.buckets("gateway_ingest_to_stored_seconds", sink=sink)
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    sim_rate = sim.finish(60)
    invalid = snap.total("gateway_messages_invalid_total")
    if invalid:
        note = (note + f" {invalid:.0f} messages refused").strip()
    return RunResult(
        system,
        w.name,
        w.count,
        w.readings,
        int(received),
        None,
        done - (first or started),
        after.cpu_s - before.cpu_s,
        after.peak_rss_mib,
        _ms(p50),
        _ms(p99),
        sim_rate,
        ok,
        note,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _sqlite_count(db: Path, prefix: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readings WHERE field = ? AND device_id LIKE ?", (MEASURE_FIELD, prefix + "%")
        ).fetchone()
    return int(row[0])
