"""The durable-bus benchmark end to end on a tiny workload: every backend runs in client and
embedded mode, counts are verified in the store, the report has what the README quotes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.workloads import ROOT

pytestmark = pytest.mark.integration


def test_durable_benchmark_on_a_tiny_workload_writes_paired_ratios(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.durable", "--quick", "--rounds", "1", "--count", "300"]
    cmd += ["--workloads", "q1_single,embedded_q1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1/1: memory → sqlite_normal → sqlite_full" in proc.stderr  # live progress lines

    data = orjson.loads((out / "durable.json").read_bytes())
    assert {"machine", "versions", "workloads", "method", "summary", "targets", "runs"} <= data.keys()
    assert {"nproc", "cpu_model", "python", "date"} <= data["machine"].keys()
    runs = data["runs"]
    assert {(r["workload"], r["variant"]) for r in runs} == {
        (w, v) for w in ("q1_single", "embedded_q1") for v in ("memory", "sqlite_normal", "sqlite_full")
    }
    for r in runs:
        assert r["ok"], r
        assert r["stored"] == 300  # counted in VictoriaMetrics / the SQLite store, not assumed
        assert r["cpu_s"] > 0 and r["msgs_per_s"] > 0
    rows = {(row["workload"], row["variant"]): row for row in data["summary"]}
    assert rows["q1_single", "memory"]["ratio_median"] == 1.0
    assert rows["embedded_q1", "sqlite_full"]["ratio_median"] > 0
    assert len(data["targets"]) == 4 and all(t["met"] in (True, False) for t in data["targets"])
    md = (out / "durable.md").read_text()
    assert "cpu(s)" in md and "rounds" in md  # the machine and the method
    assert "| q1_single | sqlite_full |" in md and "Method" in md
