"""The benchmark: `python -m bench.run [--quick] [--scenarios a,b] [--count N] [--out DIR]`.

Starts Mosquitto and VictoriaMetrics on free loopback ports, then for every selected
workload runs, one after the other on the same machine: the broker ceiling (mosquitto_sub),
the aiomqtt receive-only ceiling, the hand-rolled paho + influxdb-client bridge and the
gateway in client mode; for the embedded workloads amqtt's own pub → sub rate and the gateway
in embedded mode; then the sustained-rate run (the QoS 1 workload three times as long), the
latency run (QoS 1 at half the gateway's sustained rate: the lower of the QoS 1 run's and
the sustained-rate run's) and the memory run (the latency run's rate, five times as long).
On the single-reading workloads, `--pairs N` more alternating runs of the aiomqtt counter
and the gateway (at the fastest process count of the first pass) follow the first pass;
their median ratio decides the targets against the counter. If a target is missed (or with
`--profile`), one more gateway run is profiled with py-spy (when installed). Writes
DIR/latest.json and DIR/latest.md and prints the targets and results; progress lines go to
stderr. Exit 0 when every run completed with its count verified (targets met or not), 1
otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import report
from bench.gateway_run import run_gateway
from bench.measure import machine_info, tool_version
from bench.procs import Env, RunResult
from bench.profile import PySpy, find_py_spy, top_costs
from bench.systems import run_aiomqtt_count, run_amqtt_ceiling, run_bridge, run_mosquitto_sub
from bench.workloads import ROOT, Workload, paced, workloads
from tests.servers import Mosquitto, VictoriaMetrics

CLIENT = ("q0_single", "q1_single", "q0_batch50", "q1_batch50")
EMBEDDED = ("embedded_q0", "embedded_q1")
SCENARIOS = (*CLIENT, *EMBEDDED, "latency", "memory", "workers")
MEMORY_LENGTH = 5  # the memory run is this many times as long as the latency run, at its rate (1 vs 5 minutes)
WORKERS = (2, 4)  # `gateway run --workers N` on the client-mode workloads, beside the 1-process run
PAIRED = ("q0_single", "q1_single")  # workloads whose counter ratio is judged on repeated pairs
PAIRS = 3
METHOD = [
    "Load: device-sim in its multiplexed mode (8 connections; 2 processes for batches), fixed --count and "
    "--seed, nominal rate far above every consumer's (flat out), generated before its clock starts (--preload); "
    "the same workload for every system. The paced runs generate on the way.",
    "Receive-only ceilings (mosquitto_sub, aiomqtt counter, amqtt pub→sub) are timed from the first to the last "
    "message received by the consumer; the gateway and the bridge from the simulator's first publish (its "
    "started_ns) to the store's acknowledgement of the last reading (gateway: gateway_sink_written_total polled "
    "every 0.1 s; bridge: influxdb-client success callbacks). Until 2026-11-27 13:00 UTC the gateway was timed "
    "from the first /metrics scrape that showed a received message, which busy workers answer late: that "
    "overstated its rates, by up to 2x for batches.",
    "Stored counts are verified in the store after every run: VictoriaMetrics /api/v1/export of "
    "environment_temperature for the run's device-id prefix, or SQLite rows; a run whose count differs fails.",
    "Timestamps are current (the simulator's schedule from its start); one device's readings are >= 2 ms apart, "
    "so VictoriaMetrics' 1 ms dedup merges none and the stored count must equal the published count exactly.",
    "Gateway CPU time: utime+stime from /proc/<pid>/stat between the start of the simulator and the last write; "
    "peak RSS: VmHWM from /proc/<pid>/status (whole process life). Baselines: rusage of the consumer process "
    "(whole life, including start-up). Latency: gateway_ingest_to_stored_seconds histogram, bucket-interpolated.",
    "Workers curve: the same workload through `gateway run --workers N` (N processes sharing one $share "
    "subscription); msg/s from the summed /metrics of the N workers, CPU and peak RSS summed over the processes. "
    "The ratio targets and the 100,000 readings/s target use the fastest of the 1/2/4-process runs (named in "
    "the note).",
    "Ratio targets against the aiomqtt counter (single readings): after the first pass, --pairs (default "
    f"{PAIRS}) more pairs run one after the other, the counter then the gateway at the process count that was "
    "fastest in the first pass (systems aiomqtt_count_pN and gateway..._pN); the target is judged on the median "
    "of the pairs' ratios, each pair measured back to back, so a slow or fast moment of the shared host moves "
    "both sides of a pair. The first pass's ratio is still reported. Added 2026-11-27 23:40 UTC; earlier runs "
    "judged the first pass alone.",
    "Latency run: paced at half the gateway's sustained QoS 1 rate, the lower of the q1_single run's and the "
    "three times longer sustained-rate run's (a short flat-out run partly measures the durable bus absorbing a burst). "
    "p50/p99 of gateway_ingest_to_stored_seconds over the whole run (results table) and over the "
    "readings stored after the first 3 s (the target; the histogram's difference), which leaves out the start-up: "
    "the store creating the run's new series and the simulator settling on its pace.",
    f"Memory: peak RSS (VmHWM) of the latency run against a run {MEMORY_LENGTH} times as long at the same paced "
    "rate, each a fresh gateway process; the issue's 1 and 5 minutes scaled down to 10 and 50 s to keep the "
    "bench to a few minutes.",
    "Everything shares 2 cores: the broker, the simulator, the store and the consumer compete; compare ratios "
    "within one run, not absolute figures across runs.",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a fifteenth of the full counts: about 2 minutes")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--count", type=int, help="messages per workload (overrides the defaults)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    profiling = p.add_mutually_exclusive_group()
    profiling.add_argument(
        "--no-profile", action="store_true", help="do not profile the gateway when a target is missed"
    )
    profiling.add_argument(
        "--profile", action="store_true", help="profile the gateway (an extra run) even when every target is met"
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=PAIRS,
        help=f"repeated counter/gateway pairs on the single-reading workloads (default {PAIRS}; 0: none)",
    )
    a = p.parse_args(argv)
    selected = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = sorted(set(selected) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenarios {unknown}; choose from {','.join(SCENARIOS)}")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    machine = machine_info()
    log(f"machine: {machine['nproc']} cpu(s), {machine['cpu_model']}, Python {machine['python']}")
    ws = workloads(a.quick)
    if a.count:
        ws = {k: w.with_count(a.count) for k, w in ws.items()}
    used: list[Workload] = []
    results: list[RunResult] = []
    profile: dict[str, Any] | None = None
    long_name = "q1_single_long"
    latency_name = "q1_single_paced"
    memory_name = "q1_single_paced_long"
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        mosquitto, victoria = Mosquitto(Path(tmp) / "mosquitto", persistence=False), VictoriaMetrics(Path(tmp) / "vm")
        mosquitto.start()
        victoria.start()
        env = Env(Path(tmp), mosquitto, victoria, log)
        try:

            def run(name: str, fn: Any, w: Workload, *args: Any) -> RunResult:
                log(f"  {name} on {w.name} ({w.count:,} msgs, {w.readings:,} readings) ...")
                r: RunResult = fn(env, w, *args)
                status = "ok" if r.ok else f"FAILED: {r.note}"
                log(f"  {name} on {w.name}: {r.msgs_per_s:,.0f} msg/s, {r.readings_per_s:,.0f} readings/s ({status})")
                results.append(r)
                return r

            for name in (n for n in CLIENT if n in selected):
                w = ws[name]
                used.append(w)
                log(f"workload {name}: {w.describe()}")
                run("broker ceiling (mosquitto_sub)", run_mosquitto_sub, w)
                run("aiomqtt receive-only ceiling", run_aiomqtt_count, w)
                run("hand-rolled bridge", run_bridge, w)
                run("gateway (client mode)", run_gateway, w, False)
                if "workers" in selected:
                    for n in WORKERS:
                        run(f"gateway --workers {n}", run_gateway, w, False, f"gateway_w{n}", n)
                best = report.best_gateway(results, name)
                if name in PAIRED and best is not None and best.ok:
                    procs = report.WORKERS_OF[best.system]
                    for i in range(1, a.pairs + 1):
                        counter = f"aiomqtt_count_p{i}"
                        run(f"pair {i}: aiomqtt receive-only ceiling", run_aiomqtt_count, w, None, counter)
                        run(f"pair {i}: {best.system}", run_gateway, w, False, f"{best.system}_p{i}", procs)
            for name in (n for n in EMBEDDED if n in selected):
                w = ws[name]
                used.append(w)
                log(f"workload {name}: {w.describe()}")
                run("amqtt pub→sub ceiling", run_amqtt_ceiling, w)
                run("gateway (embedded mode)", run_gateway, w, True)
            base = report.find(results, "gateway", "q1_single")
            long_run = None
            if ("memory" in selected or "latency" in selected) and base is not None:
                w = replace(ws["q1_single"], name=long_name, count=ws["q1_single"].count * 3)
                used.append(w)
                log(f"sustained-rate run: {w.describe()}")
                long_run = run("gateway, long run", run_gateway, w, False)
            if base is not None and base.ok and {"latency", "memory"} & set(selected):
                # the maximum rate is the sustained one: a short flat-out run partly measures the
                # durable bus absorbing a burst, which the longer run shows the gateway cannot keep up
                rate = min(base.msgs_per_s, long_run.msgs_per_s if long_run is not None and long_run.ok else math.inf)
                seconds = 4 if a.quick else 10
                w = replace(paced(ws["q1_single"], rate / 2, seconds), name=latency_name)
                used.append(w)
                log(f"latency run: {w.describe()}")
                run("gateway at half its rate", run_gateway, w, False)
                if "memory" in selected:
                    w = replace(paced(ws["q1_single"], rate / 2, seconds * MEMORY_LENGTH), name=memory_name)
                    used.append(w)
                    log(f"memory run: {w.describe()}")
                    run(f"gateway at half its rate, {MEMORY_LENGTH}x longer", run_gateway, w, False)
            items = report.targets(results, latency_name, (latency_name, memory_name))
            if a.profile or (not a.no_profile and any(t.met is False for t in items)):
                profile = _profile(env, ws, selected, a.out, log)
        finally:
            mosquitto.stop()
            victoria.stop()
    items = report.targets(results, latency_name, (latency_name, memory_name))
    if profile is not None and (profiled := profile.pop("run")) is not None:
        results.append(profiled)
    elapsed = time.monotonic() - started
    data: dict[str, Any] = {
        "mode": "quick" if a.quick else "full",
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "elapsed_s": round(elapsed, 1),
        "machine": machine,
        "versions": _versions(),
        "workloads": {w.name: {**_workload_dict(w), "describe": w.describe()} for w in used},
        "results": [r.as_dict() for r in results],
        "ratios": report.ratios(results),
        "targets": [t.as_dict() for t in items],
        "profile": profile,
        "method": METHOD,
    }
    json_path, md_path = report.write(a.out, data, results, items, used)
    print("\n".join(report.targets_table(items)))
    print()
    print("\n".join(report.results_table(results)))
    log(f"wrote {json_path} and {md_path}")
    return 0 if all(r.ok for r in results) else 1


def _profile(env: Env, ws: dict[str, Workload], selected: list[str], out: Path, log: Any) -> dict[str, Any] | None:
    exe = find_py_spy()
    name = next((n for n in ("q1_single", "q0_single", *CLIENT) if n in selected), None)
    if name is None:
        return None
    if exe is None:
        log("profile skipped: py-spy is not installed (.venv/bin/pip install py-spy)")
        return {"summary": "Not profiled: py-spy is not installed.", "top": [], "run": None}
    out.mkdir(parents=True, exist_ok=True)
    spy = PySpy(exe, out / "profile.txt")
    env.profiler = spy.attach
    log(f"profiling the gateway with py-spy on {name} (an extra run; not used for the targets)")
    try:
        r = run_gateway(env, ws[name], False, system="gateway_profiled")
    finally:
        env.profiler = None
    costs = top_costs(spy.out) if not spy.error else []
    summary = (
        f"py-spy (200 Hz, --nonblocking) on the gateway during an extra `{name}` run "
        f"({r.msgs_per_s:,.0f} msg/s while sampled); collapsed stacks in bench/results/profile.txt."
        if costs
        else f"No profile: {spy.error or 'no samples'}"
    )
    return {"summary": summary, "top": [_cost(c) for c in costs], "run": r}


def _cost(c: Any) -> dict[str, Any]:
    return {"function": c.function, "self_pct": c.self_pct, "total_pct": c.total_pct}


def _workload_dict(w: Workload) -> dict[str, Any]:
    keys = ("qos", "batch", "count", "devices", "total_rate", "connections", "processes", "paced")
    return {k: getattr(w, k) for k in keys} | {"readings": w.readings, "reading_spacing_ms": w.reading_spacing_s * 1e3}


def _versions() -> dict[str, str]:
    out = {
        "mosquitto": tool_version(["mosquitto", "-h"]),
        "victoria-metrics": tool_version(["victoria-metrics", "-version"]),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT)
        out["gateway (git)"] = head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    for pkg in ("aiomqtt", "amqtt", "paho-mqtt", "influxdb-client"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


if __name__ == "__main__":
    sys.exit(main())
