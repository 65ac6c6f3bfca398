"""The benchmark end to end on one small workload: every system runs, counts are verified,
the report files have the keys the README quotes from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.workloads import ROOT

pytestmark = pytest.mark.integration


def test_quick_benchmark_on_one_small_workload_writes_verified_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--scenarios", "q1_single", "--count", "1500", "--pairs", "1"]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--no-profile"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gateway (client mode) on q1_single" in proc.stderr  # live progress lines

    data = orjson.loads((out / "latest.json").read_bytes())
    assert {"machine", "versions", "workloads", "results", "ratios", "targets", "method"} <= data.keys()
    assert {"nproc", "cpu_model", "python", "date"} <= data["machine"].keys()
    assert data["workloads"]["q1_single"]["readings"] == 1500
    by_system = {r["system"]: r for r in data["results"]}
    assert set(by_system) == {"mosquitto_sub", "aiomqtt_count", "bridge", "gateway", "aiomqtt_count_p1", "gateway_p1"}
    for r in by_system.values():
        assert r["ok"], r
        assert r["received"] == 1500
        assert r["msgs_per_s"] > 0
    assert by_system["gateway"]["stored"] == 1500  # counted in VictoriaMetrics, not assumed
    assert by_system["bridge"]["stored"] == 1500
    gw = by_system["gateway"]
    assert gw["cpu_s"] > 0 and gw["peak_rss_mib"] > 20 and gw["p99_ms"] >= gw["p50_ms"] > 0
    assert set(data["ratios"]["q1_single"]) == {"gateway/mosquitto_sub", "gateway/aiomqtt_count", "gateway/bridge"}
    verdicts = {t["target"]: t["met"] for t in data["targets"]}
    measured = {t["target"]: t["measured"] for t in data["targets"]}
    assert "median of 1 pair (" in measured["QoS 1 single readings ≥ 1.5x aiomqtt_count"]  # judged on the pair
    assert verdicts["QoS 1 single readings ≥ 1.5x aiomqtt_count"] in (True, False)
    assert verdicts["QoS 0 single readings ≥ 2.0x aiomqtt_count"] is None  # not run: never reported as met
    md = (out / "latest.md").read_text()
    assert "nproc" in md and "| q1_single | gateway |" in md
