"""The durable-bus benchmark: `python -m bench.durable [--quick] [--rounds N] [--count N]
[--workloads a,b] [--out DIR]`.

Starts Mosquitto and VictoriaMetrics on free loopback ports (as `bench.run` does) and runs
the same fixed workloads end to end through the gateway with three bus backends: memory,
SQLite `synchronous: normal` and SQLite `synchronous: full` (the shipped default). The runs
are interleaved: every round runs each workload once per backend, the backends' order
rotating from round to round (A B C, B C A, C A B, ...), so drift of a shared, noisy machine
falls on every backend alike; ratios are paired within a round (`bench.durable_report`).

Writes DIR/durable.json and DIR/durable.md (default bench/results) and prints the summary;
progress goes to stderr. Exit 0 when every run completed with its count verified in the store
(whether or not the ≥ 0.8x target is met), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import durable_report as report
from bench.durable_run import VARIANTS, run_variant
from bench.measure import machine_info, tool_version
from bench.procs import Env
from bench.workloads import ROOT, Workload, batch50, single
from tests.servers import Mosquitto, VictoriaMetrics

EMBEDDED = {"embedded_q1"}
# 2.5x the counts used until 2026-11-27 21:30 UTC: on a fast host a run of 30,000 messages
# lasted under a second, and costs that do not grow with the count (the last write batch,
# the 0.1 s polling) are the same for every backend, so they pulled each ratio towards 1.
FULL_COUNTS = {"q1_single": 75_000, "q1_batch50": 6_000, "embedded_q1": 30_000}
QUICK_DIVISOR = 15
METHOD = [
    "Backends: `bus.type: memory`; `bus.type: sqlite` with `synchronous: normal`; `bus.type: sqlite` with "
    "`synchronous: full` (the shipped default). Everything else is the shipped config (`config/gateway.external.yaml` "
    "for client mode, `config/gateway.yaml` for embedded mode) with ports and paths changed, and without the "
    "client-mode sink's `runner.max_rate` drain limit (200,000 readings/s shipped), which would cap every backend "
    "alike.",
    "Load: device-sim, multiplexed (8 connections; 2 processes for batches), fixed --count and --seed, flat out; "
    "client mode: publisher → Mosquitto → gateway (manual PUBACK after the bus append) → VictoriaMetrics; "
    "embedded mode: publisher → the gateway's amqtt broker → SQLite store. Each run gets a fresh data_dir "
    "(an empty bus.db) and its own device-id prefix.",
    "Interleaving: each round runs every workload once per backend, the backends' order rotated every round; "
    "the durable/memory ratio is paired within a round and summarised as the median (and range) over rounds.",
    "Timing: from the publisher's first publish (device-sim's started_ns; it generates the run before its "
    "clock starts, --preload) to the sink's acknowledgement of the last reading (gateway_sink_written_total, "
    "polled every 0.1 s). The stored count "
    "is then verified in the store (VictoriaMetrics export / SQLite rows); a run whose count differs fails.",
    "Gateway CPU: utime+stime of the gateway process (/proc/<pid>/stat) from the simulator's start to the last "
    "write, divided by the messages of the workload.",
    "Everything (publisher, broker, store, gateway) shares the machine's cores: compare ratios within one run, "
    "not absolute figures across runs.",
]


def workloads(quick: bool, count: int | None, names: list[str]) -> dict[str, Workload]:
    out: dict[str, Workload] = {}
    for name in names:
        n = count or FULL_COUNTS[name] // (QUICK_DIVISOR if quick else 1)
        out[name] = batch50(name, 1, n) if "batch" in name else single(name, 1, n)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"1/{QUICK_DIVISOR} of the full counts, 2 rounds")
    p.add_argument("--rounds", type=int, help="rounds (default 5; 2 with --quick)")
    p.add_argument("--count", type=int, help="messages per workload (overrides the defaults)")
    p.add_argument("--workloads", default=",".join(FULL_COUNTS), help=f"subset of {','.join(FULL_COUNTS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)} (memory first)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    names = [s.strip() for s in a.workloads.split(",") if s.strip()]
    variants = [s.strip() for s in a.variants.split(",") if s.strip()]
    if unknown := sorted(set(names) - set(FULL_COUNTS)) + sorted(set(variants) - set(VARIANTS)):
        p.error(f"unknown workloads or variants: {unknown}")
    if report.BASE not in variants:
        p.error("the memory variant is the baseline of every ratio: keep it")
    rounds = a.rounds or (2 if a.quick else 5)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    machine = machine_info()
    log(f"machine: {machine['nproc']} cpu(s), {machine['cpu_model']}, Python {machine['python']}")
    ws = workloads(a.quick, a.count, names)
    runs: list[report.Run] = []
    with tempfile.TemporaryDirectory(prefix="gateway-bench-durable-") as tmp:
        mosquitto, victoria = Mosquitto(Path(tmp) / "mosquitto", persistence=False), VictoriaMetrics(Path(tmp) / "vm")
        mosquitto.start()
        victoria.start()
        env = Env(Path(tmp), mosquitto, victoria, log)
        try:
            for rnd in range(rounds):
                order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
                log(f"round {rnd + 1}/{rounds}: {' → '.join(order)}")
                for name, w in ws.items():
                    for v in order:
                        system = f"{v}_r{rnd}"
                        r = run_variant(env, w, name in EMBEDDED, v, system)
                        status = "ok" if r.ok else f"FAILED: {r.note}"
                        log(
                            f"  {name} {v}: {r.msgs_per_s:,.0f} msg/s, {r.readings_per_s:,.0f} readings/s, "
                            f"CPU {r.cpu_s or 0:.2f} s ({status})"
                        )
                        runs.append(report.Run(rnd, v, r))
        finally:
            mosquitto.stop()
            victoria.stop()
    rows = report.summary(runs, names, variants)
    items = report.verdicts(rows)
    data: dict[str, Any] = {
        "mode": "quick" if a.quick else "full",
        "command": "python -m bench.durable " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rounds": rounds,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine,
        "versions": _versions(),
        "workloads": {w.name: w.describe() for w in ws.values()},
        "method": METHOD,
        "summary": rows,
        "targets": items,
        "runs": [x.as_dict() for x in runs],
    }
    json_path, md_path = report.write(a.out, data, rows, runs)
    print("\n".join(report.summary_table(rows)))
    print()
    print("\n".join(report.verdict_table(items)))
    log(f"wrote {json_path} and {md_path}")
    return 0 if all(x.result.ok for x in runs) else 1


def _versions() -> dict[str, str]:
    out = {
        "mosquitto": tool_version(["mosquitto", "-h"]),
        "victoria-metrics": tool_version(["victoria-metrics", "-version"]),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT)
        out["gateway (git)"] = head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    return out


if __name__ == "__main__":
    sys.exit(main())
