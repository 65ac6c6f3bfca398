"""Ratios, targets and the written reports (bench/results/latest.json and latest.md).

Targets are judged only on figures measured in the same run; a target whose runs were not
made (not selected, or failed) is reported as "not measured" or "not met", never as met.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.gateway_run import WARMUP_S
from bench.procs import RunResult
from bench.workloads import Workload

BASELINES = ("mosquitto_sub", "aiomqtt_count", "bridge", "amqtt_pubsub")
MEMORY_TOLERANCE = 1.20  # "flat" (issue 3): the long run's peak RSS within +20 % of the short run's
GENERATOR_BOUND = 0.9  # the gateway within 10 % of what mosquitto_sub received: load-generator bound


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: str
    met: bool | None  # None: not measured in this run
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.name, "measured": self.measured, "met": self.met, "note": self.note}


GATEWAYS = ("gateway", "gateway_w2", "gateway_w4")  # 1, 2 and 4 processes (`--workers N`)
WORKERS_OF = {"gateway": 1, "gateway_w2": 2, "gateway_w4": 4}


def find(results: Sequence[RunResult], system: str, workload: str) -> RunResult | None:
    return next((r for r in results if r.system == system and r.workload == workload), None)


def best_gateway(results: Sequence[RunResult], workload: str) -> RunResult | None:
    """The fastest successful gateway run on `workload` (1, 2 or 4 processes), else the 1-process run."""
    runs = [r for g in GATEWAYS if (r := find(results, g, workload)) is not None and r.ok]
    return max(runs, key=lambda r: r.msgs_per_s) if runs else find(results, "gateway", workload)


def workers_curve(results: Sequence[RunResult]) -> list[str]:
    """Markdown rows: msg/s over 1, 2 and 4 processes, and the ratio to the aiomqtt counter."""
    rows = []
    for workload in dict.fromkeys(r.workload for r in results if r.system == "gateway_w2"):
        base = find(results, "aiomqtt_count", workload)
        cells = []
        for g in GATEWAYS:
            r = find(results, g, workload)
            ratio = f" ({r.msgs_per_s / base.msgs_per_s:.2f}x)" if r and r.ok and base and base.msgs_per_s else ""
            cells.append("-" if r is None else (f"{r.msgs_per_s:,.0f}{ratio}" if r.ok else "failed"))
        rows.append(f"| {workload} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["| workload | 1 process | 2 processes | 4 processes |", "|---|---:|---:|---:|", *rows]


def ratios(results: Sequence[RunResult]) -> dict[str, dict[str, float]]:
    """workload -> {"gateway/<baseline>": gateway msg/s ÷ baseline msg/s} for the successful runs."""
    out: dict[str, dict[str, float]] = {}
    for gw in results:
        if gw.system not in GATEWAYS or not gw.ok:
            continue
        for base in BASELINES:
            b = find(results, base, gw.workload)
            if b is not None and b.ok and b.msgs_per_s > 0:
                out.setdefault(gw.workload, {})[f"{gw.system}/{base}"] = round(gw.msgs_per_s / b.msgs_per_s, 2)
    return out


_WORKERS_NOTE = {"gateway_w2": "with --workers 2", "gateway_w4": "with --workers 4"}


def pairs(results: Sequence[RunResult], workload: str) -> list[tuple[RunResult, RunResult]]:
    """The repeated (counter, gateway) pairs of `workload` (systems `aiomqtt_count_pN` and
    `<gateway>_pN`, see bench.run), in order; a pair missing its gateway run is left out."""
    out = []
    for counter in (r for r in results if r.workload == workload and r.system.startswith("aiomqtt_count_p")):
        suffix = counter.system.removeprefix("aiomqtt_count")
        gw = next((r for r in results if r.workload == workload and r.system in {g + suffix for g in GATEWAYS}), None)
        if gw is not None:
            out.append((counter, gw))
    return out


def _ratio_target(results: Sequence[RunResult], workload: str, base: str, want: float, label: str) -> Target:
    name = f"{label} ≥ {want}x {base}"
    gw, b = best_gateway(results, workload), find(results, base, workload)
    if gw is None or b is None:
        return Target(name, "not run", None)
    if not gw.ok or not b.ok:
        return Target(name, "run failed", False, "; ".join(x.note for x in (gw, b) if x.note))
    ratio = gw.msgs_per_s / b.msgs_per_s
    measured = f"{ratio:.2f}x ({gw.msgs_per_s:,.0f} vs {b.msgs_per_s:,.0f} msg/s)"
    how = _WORKERS_NOTE.get(gw.system, "")
    repeated = pairs(results, workload) if base == "aiomqtt_count" else []
    if not repeated:
        return Target(name, measured, ratio >= want, "; ".join(filter(None, [how, _bound_note(results, gw)])))
    failed = [x.note or x.system for pair in repeated for x in pair if not x.ok]
    if failed:
        return Target(name, "a repeated pair failed", False, "; ".join(failed))
    each = [g.msgs_per_s / c.msgs_per_s for c, g in repeated]
    middle = statistics.median(each)
    shown = ", ".join(f"{r:.2f}x" for r in each)
    count = f"{len(each)} pair" + ("s" if len(each) > 1 else "")
    measured = f"{middle:.2f}x, median of {count} ({shown}); first pass {measured}"
    return Target(name, measured, middle >= want, "; ".join(filter(None, [how, _bound_note(results, gw)])))


def _bound_note(results: Sequence[RunResult], gw: RunResult) -> str:
    ceiling = find(results, "mosquitto_sub", gw.workload)
    if ceiling is not None and ceiling.ok and gw.msgs_per_s >= GENERATOR_BOUND * ceiling.msgs_per_s:
        return f"load-generator bound: mosquitto_sub received {ceiling.msgs_per_s:,.0f} msg/s"
    return ""


def targets(results: Sequence[RunResult], latency_run: str, memory_runs: tuple[str, str]) -> list[Target]:
    out = [
        _ratio_target(results, "q0_single", "aiomqtt_count", 2.0, "QoS 0 single readings"),
        _ratio_target(results, "q1_single", "aiomqtt_count", 1.5, "QoS 1 single readings"),
    ]
    for w in ("q0_single", "q1_single", "q0_batch50", "q1_batch50"):
        out.append(_ratio_target(results, w, "bridge", 2.5, w))
    for w in ("q0_batch50", "q1_batch50"):
        name = f"{w}: ≥ 100,000 readings/s stored"
        gw = best_gateway(results, w)  # like the ratio targets: the fastest of 1, 2 and 4 processes
        if gw is None:
            out.append(Target(name, "not run", None))
        else:
            measured = f"{gw.readings_per_s:,.0f} readings/s" if gw.ok else "run failed"
            note = "; ".join(filter(None, [_WORKERS_NOTE.get(gw.system, ""), gw.note or _bound_note(results, gw)]))
            out.append(Target(name, measured, gw.ok and gw.readings_per_s >= 100_000, note))
    for w in ("embedded_q0", "embedded_q1"):
        out.append(_ratio_target(results, w, "amqtt_pubsub", 1.5, f"{w} (embedded)"))
    paced = find(results, "gateway", latency_run)
    name = "latency p99 ≤ 250 ms at half the maximum rate (QoS 1 single)"
    if paced is None:
        out.append(Target(name, "not run", None))
    elif not paced.ok or paced.p99_ms is None:
        out.append(Target(name, "run failed", False, paced.note))
    else:
        whole = f"p99 {paced.p99_ms:.0f} ms, p50 {paced.p50_ms:.0f} ms at {paced.msgs_per_s:,.0f} msg/s"
        if paced.p99_steady_ms is None or paced.p50_steady_ms is None:
            out.append(Target(name, whole, paced.p99_ms <= 250))
        else:
            measured = f"p99 {paced.p99_steady_ms:.0f} ms, p50 {paced.p50_steady_ms:.0f} ms after the warm-up"
            note = f"whole run including the first {WARMUP_S:.0f} s: {whole}"
            out.append(Target(name, measured, paced.p99_steady_ms <= 250, note))
    short, long = (find(results, "gateway", m) for m in memory_runs)
    name = f"memory flat between a paced run and one 5x as long (peak RSS within +{(MEMORY_TOLERANCE - 1) * 100:.0f} %)"
    if short is None or long is None or short.peak_rss_mib is None or long.peak_rss_mib is None:
        out.append(Target(name, "not run", None))
    else:
        measured = f"{short.peak_rss_mib:.0f} MiB ({short.messages:,} msgs) → "
        measured += f"{long.peak_rss_mib:.0f} MiB ({long.messages:,} msgs)"
        out.append(Target(name, measured, long.ok and long.peak_rss_mib <= short.peak_rss_mib * MEMORY_TOLERANCE))
    return out


def _f(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def results_table(results: Sequence[RunResult]) -> list[str]:
    rows = [
        "| workload | system | msg/s | readings/s | received | stored (verified) | p50 ms | p99 ms | CPU s | peak RSS MiB | sim msg/s | note |",  # noqa: E501
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        stored = "-" if r.stored is None else f"{r.stored:,}"
        rows.append(
            f"| {r.workload} | {r.system} | {_f(r.msgs_per_s)} | {_f(r.readings_per_s)} | {r.received:,} | {stored} | "
            f"{_f(r.p50_ms, '.1f')} | {_f(r.p99_ms, '.1f')} | {_f(r.cpu_s, '.2f')} | {_f(r.peak_rss_mib, '.0f')} | "
            f"{_f(r.sim_rate)} | {'FAILED ' if not r.ok else ''}{r.note} |"
        )
    return rows


def targets_table(items: Sequence[Target]) -> list[str]:
    rows = ["| target | measured | result | note |", "|---|---|---|---|"]
    for t in items:
        verdict = "not measured" if t.met is None else ("met" if t.met else "**not met**")
        rows.append(f"| {t.name} | {t.measured} | {verdict} | {t.note} |")
    return rows


def write(out_dir: Path, data: dict[str, Any], results: Sequence[RunResult], items: Sequence[Target],
          workloads: Sequence[Workload]) -> tuple[Path, Path]:  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "latest.json", out_dir / "latest.md"
    json_path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    m = data["machine"]
    lines = [
        f"# Benchmark results ({data['mode']} run)",
        "",
        f"Date: {m['date']}. Machine: `nproc` = {m['nproc']}, CPU: {m['cpu_model']}, {m['memory']} RAM, "
        f"Python {m['python']}, {m['os']}; load average at start {m['load_average_at_start']}.",
        f"Command: `{data['command']}` ({data['elapsed_s']:.0f} s). Versions: "
        + ", ".join(f"{k} {v}" for k, v in data["versions"].items())
        + ".",
        "",
        "## Workloads",
        "",
        *[f"- `{w.name}`: {w.describe()}" for w in workloads],
        "",
        "## Targets",
        "",
        *targets_table(items),
        "",
        "## Results",
        "",
        *results_table(results),
        "",
        *(
            ["## Workers curve (msg/s; x the aiomqtt counter)", "", *curve, ""]
            if (curve := workers_curve(results))
            else []
        ),
        "## Ratios (gateway msg/s ÷ baseline msg/s, same workload, same run)",
        "",
        *[f"- `{w}`: " + ", ".join(f"{k} = {v}" for k, v in rs.items()) for w, rs in data["ratios"].items()],
        "",
    ]
    profile = data.get("profile")
    if profile:
        lines += ["## Profile of the gateway (top 5 by own time)", "", profile["summary"], ""]
        if profile["top"]:
            lines += ["| function | self % | on stack % |", "|---|---:|---:|"]
            lines += [f"| `{c['function']}` | {c['self_pct']} | {c['total_pct']} |" for c in profile["top"]]
            lines.append("")
    lines += ["## Method", "", *[f"- {n}" for n in data["method"]], ""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path
