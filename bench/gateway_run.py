"""The gateway run: `gateway run` as a subprocess on the shipped config (client mode →
VictoriaMetrics, or embedded mode → SQLite), driven by the simulator and observed through
its /metrics (polled every `POLL_S`, only the series it reads) and /proc. The stored count is verified in the store
after the gateway stopped (drained); a run that stalls for 20 s or outlasts its time limit
is returned with `ok=False`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.measure import MetricsSnapshot, ProcSample, histogram_quantile, proc_sample
from bench.procs import Env, RunResult, Sim, device_prefix, run_timeout, vm_match, workdir_for
from bench.workloads import MEASURE_FIELD, Workload, client_config, embedded_config
from tests.gateway_proc import GatewayProcess
from tests.servers import env_without_proxies, free_port, free_ports

POLL_S = 0.1
# Only the series the bench reads: a whole /metrics page 10 times a second is work the gateway
# would not do under a real scraper (one page every 15 s or so).
SCRAPED = "&".join(
    f"name[]={name}"
    for name in (
        "gateway_messages_received_total",
        "gateway_messages_invalid_total",
        "gateway_sink_written_total",
        "gateway_ingest_to_stored_seconds_bucket",
    )
)
WARMUP_S = 3.0  # paced runs: latency also reported without the first seconds (new series in the store, start-up)


def run_gateway(
    env: Env,
    w: Workload,
    embedded: bool,
    system: str = "gateway",
    workers: int = 1,
    edit_config: Callable[[Path], None] | None = None,
) -> RunResult:
    """`gateway run` (client mode → VictoriaMetrics, or embedded mode → SQLite) on the shipped config;
    `workers` > 1: `gateway run --workers N` (client mode), observed through the N admin ports.
    `edit_config(path)`, if given, changes the run's config file before the gateway starts."""
    wd = workdir_for(env, system, w)
    prefix = device_prefix(system, w)
    admin = free_ports(workers)
    if embedded:
        mqtt_port = free_port()
        config = embedded_config(wd, mqtt_port, admin)
    else:
        mqtt_port = env.mosquitto.port
        config = client_config(wd, mqtt_port, env.victoria.url, f"bench-{prefix}{time.time_ns()}", admin)
    if edit_config is not None:
        edit_config(config)
    gw = GatewayProcess(config, env=env_without_proxies(), args=("--workers", str(workers)) if workers > 1 else ())
    gw.start(wait_ready=workers == 1)
    try:
        if workers > 1:
            _wait_ready([f"http://127.0.0.1:{admin + i}/readyz" for i in range(workers)])
        urls = [f"http://127.0.0.1:{admin + i}/metrics?{SCRAPED}" for i in range(workers)]
        result = _drive(env, gw, w, mqtt_port, prefix, "store" if embedded else "tsdb", system, wd, urls)
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
    env: Env, gw: GatewayProcess, w: Workload, port: int, prefix: str, sink: str, system: str, wd: Path,
    urls: list[str],
) -> RunResult:  # fmt: skip
    assert gw.proc is not None
    pid = gw.proc.pid
    stop_profiler = env.profiler(pid) if env.profiler is not None else None
    before = _tree_sample(pid)
    sim = Sim(w, port, prefix, wd)
    started = time.monotonic()
    first: float | None = None
    last_change, last_written, last_log = started, -1.0, started
    ok, note = True, ""
    snaps: list[MetricsSnapshot] = []
    warm: list[tuple[float, float]] | None = None  # paced runs: the histogram after the warm-up
    while True:
        try:
            snaps = [MetricsSnapshot.scrape(url) for url in urls]
        except OSError:  # a busy worker did not answer in time: try again (a stall still ends the run)
            if time.monotonic() - last_change > 20:
                ok, note = False, f"stalled at {last_written:.0f} of {w.readings} readings written (no /metrics)"
                break
            continue
        now = time.monotonic()
        received = sum(snap.total("gateway_messages_received_total") for snap in snaps)
        written = sum(snap.total("gateway_sink_written_total", sink=sink) for snap in snaps)
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
        if w.paced and warm is None and first is not None and now - first >= WARMUP_S:
            warm = _merge([snap.buckets("gateway_ingest_to_stored_seconds", sink=sink) for snap in snaps])
        time.sleep(POLL_S)
    done, done_ns = time.monotonic(), time.time_ns()
    after = _tree_sample(pid)
    if stop_profiler is not None:
        stop_profiler()
    buckets = _merge([snap.buckets("gateway_ingest_to_stored_seconds", sink=sink) for snap in snaps])
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    steady = None
    if warm is not None:  # what was stored after the warm-up: the histogram's difference
        before_warm = dict(warm)
        delta = [(le, count - before_warm.get(le, 0.0)) for le, count in buckets]
        steady = (_ms(histogram_quantile(0.5, delta)), _ms(histogram_quantile(0.99, delta)))
    sim_rate = sim.finish(60)
    # From the simulator's first publish: a first scrape of busy workers can come late.
    elapsed = (done_ns - sim.started_ns) / 1e9 if sim.started_ns else done - (first or started)
    invalid = sum(snap.total("gateway_messages_invalid_total") for snap in snaps)
    if invalid:
        note = (note + f" {invalid:.0f} messages refused").strip()
    return RunResult(
        system,
        w.name,
        w.count,
        w.readings,
        int(received),
        None,
        elapsed,
        after.cpu_s - before.cpu_s,
        after.peak_rss_mib,
        _ms(p50),
        _ms(p99),
        sim_rate,
        ok,
        note,
        *(steady or (None, None)),
    )


def _wait_ready(urls: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(pending[0], timeout=2) as r:
            if r.status == 200:
                pending.pop(0)
                continue
        time.sleep(0.1)
    if pending:
        raise RuntimeError(f"gateway workers not ready: {pending}")


def _tree_sample(pid: int) -> ProcSample:
    """CPU and peak RSS of `pid` plus its children (the workers), summed."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    samples = [proc_sample(pid)]
    for kid in kids:
        with contextlib.suppress(OSError):
            samples.append(proc_sample(int(kid)))
    return ProcSample(*(sum(getattr(x, f) for x in samples) for f in ("cpu_s", "rss_mib", "peak_rss_mib")))


def _merge(per_worker: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Cumulative histogram buckets of several workers added up."""
    if len(per_worker) == 1:
        return per_worker[0]
    total: dict[float, float] = {}
    for buckets in per_worker:
        for le, count in buckets:
            total[le] = total.get(le, 0.0) + count
    return sorted(total.items())


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _sqlite_count(db: Path, prefix: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readings WHERE field = ? AND device_id LIKE ?", (MEASURE_FIELD, prefix + "%")
        ).fetchone()
    return int(row[0])
