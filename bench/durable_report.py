"""Figures and files of the durable-bus benchmark (`bench.durable`).

Ratios are paired by round: in round r, variant V's rate divided by the memory bus's rate in
the same round (so a slow stretch of the machine affects both sides); the summary gives the
median of those paired ratios and their range. Rates, CPU per message and throughput
medians use only runs that completed with their count verified; a failed run counts as 0 in
its round's ratio (never as fast).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.procs import RunResult

BASE = "memory"
TARGET = 0.8


@dataclass(slots=True)
class Run:
    round: int
    variant: str
    result: RunResult

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        per_msg = _cpu_us(r)
        return {"round": self.round, "variant": self.variant, **r.as_dict(), "cpu_us_per_msg": per_msg}


def _cpu_us(r: RunResult) -> float | None:
    return round(r.cpu_s / r.messages * 1e6, 1) if r.ok and r.cpu_s is not None and r.messages else None


def _rate(r: RunResult) -> float:
    """The workload's unit: readings/s for batches, messages/s otherwise."""
    return r.readings_per_s if r.readings != r.messages else r.msgs_per_s


def summary(runs: list[Run], workloads: list[str], variants: list[str]) -> list[dict[str, Any]]:
    """One row per (workload, variant): median rate, CPU µs/msg, and paired ratios to memory."""
    rows: list[dict[str, Any]] = []
    for wl in workloads:
        mine = [x for x in runs if x.result.workload == wl]
        base = {x.round: _rate(x.result) for x in mine if x.variant == BASE}
        base_cpu = _median([_cpu_us(x.result) for x in mine if x.variant == BASE])
        for v in variants:
            vs = [x for x in mine if x.variant == v]
            ok = [x for x in vs if x.result.ok]
            ratios = [_rate(x.result) / base[x.round] for x in vs if base.get(x.round)]
            cpu = _median([_cpu_us(x.result) for x in vs])
            rows.append(
                {
                    "workload": wl,
                    "variant": v,
                    "unit": "readings/s" if vs and vs[0].result.readings != vs[0].result.messages else "msg/s",
                    "runs": len(vs),
                    "ok_runs": len(ok),
                    "median_rate": round(statistics.median([_rate(x.result) for x in ok]), 1) if ok else None,
                    "ratio_median": round(statistics.median(ratios), 3) if ratios else None,
                    "ratio_min": round(min(ratios), 3) if ratios else None,
                    "ratio_max": round(max(ratios), 3) if ratios else None,
                    "cpu_us_per_msg": cpu,
                    "cpu_ratio": round(cpu / base_cpu, 3) if cpu is not None and base_cpu else None,
                }
            )
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target, per durable variant and workload: median paired ratio ≥ 0.8."""
    out = []
    for row in rows:
        if row["variant"] == BASE:
            continue
        ratio = row["ratio_median"]
        out.append(
            {
                "target": f"{row['workload']}: {row['variant']} ≥ {TARGET}x memory",
                "measured": ratio,
                "met": None if ratio is None else ratio >= TARGET,
            }
        )
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def summary_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workload | bus | rate (median) | durable/memory (median, min-max) | gateway CPU µs/msg | CPU vs memory |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        rate = f"{r['median_rate']:,.0f} {r['unit']}" if r["median_rate"] is not None else "failed"
        if r["variant"] == BASE:
            ratio = "1 (baseline)"
        elif r["ratio_median"] is None:
            ratio = "n/a"
        else:
            ratio = f"{r['ratio_median']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        cpu = f"{r['cpu_us_per_msg']:,.0f}" if r["cpu_us_per_msg"] is not None else "n/a"
        cpu_ratio = f"{r['cpu_ratio']:.2f}x" if r["cpu_ratio"] is not None else "n/a"
        failed = "" if r["ok_runs"] == r["runs"] else f" ({r['runs'] - r['ok_runs']} failed)"
        lines.append(f"| {r['workload']} | {r['variant']}{failed} | {rate} | {ratio} | {cpu} | {cpu_ratio} |")
    return lines


def verdict_table(items: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | result |", "|---|---:|---|"]
    for t in items:
        measured = f"{t['measured']:.2f}x" if t["measured"] is not None else "n/a"
        result = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {measured} | {result} |")
    return lines


def runs_table(runs: list[Run]) -> list[str]:
    lines = [
        "| round | workload | bus | msg/s | readings/s | seconds | CPU s | peak RSS MiB | stored | ok |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for x in runs:
        r = x.result
        lines.append(
            f"| {x.round} | {r.workload} | {x.variant} | {r.msgs_per_s:,.0f} | {r.readings_per_s:,.0f} | "
            f"{r.seconds:.2f} | {r.cpu_s or 0:.2f} | {r.peak_rss_mib or 0:.0f} | {r.stored} | "
            f"{'yes' if r.ok else 'no: ' + r.note} |"
        )
    return lines


def write(out: Path, data: dict[str, Any], rows: list[dict[str, Any]], runs: list[Run]) -> tuple[Path, Path]:
    """bench/results/durable.json and durable.md."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "durable.json", out / "durable.md"
    json_path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    m = data["machine"]
    md = [
        "# Durable bus vs memory bus, end to end",
        "",
        f"Command: `{data['command']}` ({data['mode']}, {data['rounds']} rounds, {data['elapsed_s']:.0f} s).",
        "",
        f"Machine: {m['nproc']} cpu(s), {m['cpu_model']}, {m['memory']}, {m['os']}, Python {m['python']}; "
        f"load average at start {m['load_average_at_start']}; {m['date']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()) + ".",
        "",
        "## Workloads",
        "",
        *[f"- `{name}`: {desc}" for name, desc in data["workloads"].items()],
        "",
        "## Method",
        "",
        *[f"- {line}" for line in data["method"]],
        "",
        "## Summary",
        "",
        *summary_table(rows),
        "",
        *verdict_table(data["targets"]),
        "",
        "## Every run",
        "",
        *runs_table(runs),
        "",
    ]
    md_path.write_text("\n".join(md))
    return json_path, md_path
