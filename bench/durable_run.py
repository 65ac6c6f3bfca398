"""One run of the durable-bus benchmark: `gateway run` on the shipped config with its `bus`
section replaced by one bus variant (memory, SQLite `synchronous: normal`, SQLite
`synchronous: full`), driven by the simulator, observed through its /metrics and /proc.

Timing is the suite's (`bench.gateway_run`): from the first message the gateway received
(`gateway_messages_received_total`, polled every `POLL_S`) to the moment its sink had
written every reading (`gateway_sink_written_total`), but never shorter than the publisher's
own duration (`count / achieved_rate`): a first scrape answered late by a busy event loop would
otherwise shorten the interval. CPU time is the gateway process's
utime+stime over that stretch (from the simulator's start to the last write). The stored
count is verified in the store after the gateway stopped: VictoriaMetrics export (client
mode) or SQLite rows (embedded mode). A run that stalls for 20 s, outlasts its time limit or
stores a different count is returned with `ok=False`.

Only the `bus` section and the client-mode sink's `runner.max_rate` differ from the shipped
configs: the shipped 20,000 readings/s drain limit would otherwise cap the batch workload
for every variant alike and hide the bus's cost (see `bench.durable`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import yaml

from bench.measure import MetricsSnapshot, proc_sample
from bench.procs import Env, RunResult, Sim, device_prefix, run_timeout, vm_match, workdir_for
from bench.workloads import MEASURE_FIELD, Workload, client_config, embedded_config
from tests.gateway_proc import GatewayProcess
from tests.servers import env_without_proxies, free_port

POLL_S = 0.1
STALL_S = 20.0

# name -> the shipped `bus` section's `type`, and what replaces settings of its `sqlite` section
VARIANTS: dict[str, dict[str, Any]] = {
    "memory": {"type": "memory"},
    "sqlite_normal": {"type": "sqlite", "synchronous": "normal"},
    "sqlite_full": {"type": "sqlite", "synchronous": "full"},
}


def variant_config(path: Path, variant: str) -> None:
    """Rewrite the benchmark config at `path` for bus `variant` (and no sink drain-rate limit)."""
    cfg: dict[str, Any] = yaml.safe_load(path.read_text())
    kind, *settings = VARIANTS[variant].items()
    bus = cfg["bus"]
    bus["type"] = kind[1]
    if kind[1] == "memory":
        bus.pop("sqlite", None)
    else:
        bus.setdefault("sqlite", {}).update(settings)
    for sink in cfg["sinks"].values():
        runner = sink.get("runner")
        if isinstance(runner, dict):
            runner.pop("max_rate", None)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def run_variant(env: Env, w: Workload, embedded: bool, variant: str, system: str) -> RunResult:
    """Workload `w` through the gateway (client mode → VictoriaMetrics, or embedded → SQLite)
    with bus `variant`; `system` names the run (its work directory and device-id prefix)."""
    wd = workdir_for(env, system, w)
    prefix = device_prefix(system, w)
    admin = free_port()
    if embedded:
        mqtt_port = free_port()
        config = embedded_config(wd, mqtt_port, admin)
    else:
        mqtt_port = env.mosquitto.port
        config = client_config(wd, mqtt_port, env.victoria.url, f"bench-{prefix}{time.time_ns()}", admin)
    variant_config(config, variant)
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
    pid = gw.proc.pid
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    stop_profiler = env.profiler(pid) if env.profiler is not None else None
    before = proc_sample(pid)
    sim = Sim(w, port, prefix, wd)
    started = time.monotonic()
    first: float | None = None
    last_change, last_written, last_log = started, -1.0, started
    ok, note, received = True, "", 0.0
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
        if now - last_change > STALL_S or now - started > run_timeout(w):
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
    sim_rate = sim.finish(60)
    seconds = done - (first or started)
    if sim_rate and seconds < w.count / sim_rate:  # the first scrape came late: the loop was busy
        seconds = w.count / sim_rate
        note = (note + " interval raised to the publisher's duration").strip()
    return RunResult(
        system,
        w.name,
        w.count,
        w.readings,
        int(received),
        None,
        seconds,
        after.cpu_s - before.cpu_s,
        after.peak_rss_mib,
        sim_rate=sim_rate,
        ok=ok,
        note=note,
    )


def _sqlite_count(db: Path, prefix: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readings WHERE field = ? AND device_id LIKE ?", (MEASURE_FIELD, prefix + "%")
        ).fetchone()
    return int(row[0])
