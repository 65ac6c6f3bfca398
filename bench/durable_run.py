"""One run of the durable-bus benchmark: `gateway run` on the shipped config with its `bus`
section replaced by one bus variant (memory, SQLite `synchronous: normal`, SQLite
`synchronous: full`), driven by the simulator, observed through its /metrics and /proc.

The run itself is the suite's (`bench.gateway_run.run_gateway`, with the config edited):
from the simulator's first publish to the moment the gateway's sink had written every
reading (`gateway_sink_written_total`, polled every 0.1 s); CPU time is the gateway's utime+stime over
that stretch; the stored count is verified in the store after the gateway stopped, and a run
that stalls for 20 s, outlasts its time limit or stores a different count has `ok=False`.

Only the `bus` section and the client-mode sink's `runner.max_rate` differ from the shipped
configs: the shipped 200,000 readings/s drain limit could otherwise cap the batch workload
for every variant alike and hide the bus's cost (see `bench.durable`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.gateway_run import run_gateway
from bench.procs import Env, RunResult
from bench.workloads import Workload

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
    return run_gateway(env, w, embedded, system, edit_config=lambda path: variant_config(path, variant))
