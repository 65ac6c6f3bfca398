"""The fixed workloads of the benchmark and the gateway configurations it runs them with.

Every workload is a fixed number of messages from `device-sim` in its multiplexed mode
(`--connections`), with a fixed `--seed`, published as fast as the simulator can (its nominal
`--total-rate` is set far above what any consumer here reaches), generated before the clock
starts (`--preload`), so that generating does not take CPU from the system under test. The
paced runs generate on the way (2 s ahead), as a fleet would. Timestamps are the
simulator's due times from the moment it starts (current time), so VictoriaMetrics keeps them.

Timestamp spacing (VictoriaMetrics runs with `-dedup.minScrapeInterval=1ms`): the nominal
rate is chosen so that one device's readings are at least `MIN_SPACING_S` (2 ms) apart, so
every reading is a distinct point and the stored count must equal the published count
exactly. `Workload` refuses a combination that would violate this.

Each run gets its own device-id prefix, so the runs' series never mix in a shared store.
The gateway runs on the shipped configs (`config/gateway.external.yaml` for the client mode,
`config/gateway.yaml` for the embedded mode) with only ports, paths and the client id changed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MIN_SPACING_S = 0.002
SEED = 20261127
# The route of both shipped configs, the topic every workload publishes to.
TOPIC_FILTER = "devices/+/telemetry"
MEASURE_FIELD = "temperature"  # required by the schema: one stored point per reading
# Flat-out runs must last long enough that what does not scale with the count (the gateway's
# last write batch and its HTTP round trip, the 0.1 s polling of /metrics, the simulator's
# start) is small beside the run: about 0.2-0.4 s, under a tenth of a gateway run on a fast
# host (50k msg/s). At 60,000 messages a fast host's gateway run lasted 1.2 s and these
# costs lowered its rate by 10-20 % (2026-11-27: 1.75x the counter at 60,000, 2.10x at 180,000).
SINGLE_COUNT = 150_000
BATCH_COUNT = 12_000  # messages of 50 readings: 600,000 readings
EMBEDDED_COUNT = 36_000


@dataclass(frozen=True, slots=True)
class Workload:
    """`count` messages of `batch` readings each at QoS `qos` from `devices` simulated devices."""

    name: str
    qos: int
    batch: int
    count: int
    devices: int
    total_rate: float  # nominal messages/s; far above the consumers' rates except in paced runs
    connections: int = 8
    processes: int = 1
    paced: bool = False  # True: total_rate is the intended rate (latency run), not "flat out"

    def __post_init__(self) -> None:
        if self.reading_spacing_s < MIN_SPACING_S:
            raise ValueError(
                f"{self.name}: one device's readings would be {self.reading_spacing_s * 1e3:.3f} ms apart"
                f" (< {MIN_SPACING_S * 1e3:.0f} ms): VictoriaMetrics' 1 ms dedup would merge them"
            )

    @property
    def readings(self) -> int:
        return self.count * self.batch

    @property
    def reading_spacing_s(self) -> float:
        """Time between two readings of one device in the simulator's schedule."""
        return self.devices / (self.total_rate * self.batch)

    def with_count(self, count: int) -> Workload:
        return replace(self, count=count)

    def sim_command(self, port: int, id_prefix: str, summary: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "device_sim",
            "--broker",
            f"mqtt://127.0.0.1:{port}",
            "--devices",
            str(self.devices),
            "--total-rate",
            f"{self.total_rate:g}",
            "--count",
            str(self.count),
            "--qos",
            str(self.qos),
            "--batch",
            str(self.batch),
            "--seed",
            str(SEED),
            "--id-prefix",
            id_prefix,
            "--connections",
            str(self.connections),
            "--processes",
            str(self.processes),
            "--no-progress",
            "--summary-json",
            str(summary),
            "--drain-timeout",
            "120s",
            *(() if self.paced else ("--preload",)),
        ]

    def describe(self) -> str:
        pace = f"paced at {self.total_rate:,.0f} msg/s" if self.paced else "flat out"
        return (
            f"{self.count:,} msgs x {self.batch} reading(s), QoS {self.qos}, {self.devices:,} devices over "
            f"{self.connections} connections x {self.processes} process(es), {pace}, seed {SEED}"
        )


def single(name: str, qos: int, count: int) -> Workload:
    # 2,000 devices at a nominal 500k msg/s: 4 ms between one device's readings.
    return Workload(name, qos, 1, count, devices=2000, total_rate=5e5)


def batch50(name: str, qos: int, count: int) -> Workload:
    # 1,000 devices at a nominal 10k msg/s (500k readings/s): 2 ms between one device's readings.
    # Two simulator processes: one cannot serialise 50-reading payloads faster than ~100k readings/s.
    return Workload(name, qos, 50, count, devices=1000, total_rate=1e4, processes=2)


def paced(base: Workload, rate: float, seconds: float) -> Workload:
    """`base` at `rate` msg/s for about `seconds` (the latency run)."""
    return replace(base, name=f"{base.name}_paced", total_rate=rate, count=max(100, int(rate * seconds)), paced=True)


def workloads(quick: bool) -> dict[str, Workload]:
    """The workloads of one run: name -> workload (quick: a fifteenth of the full counts)."""
    k = 15 if quick else 1
    return {
        "q0_single": single("q0_single", 0, SINGLE_COUNT // k),
        "q1_single": single("q1_single", 1, SINGLE_COUNT // k),
        "q0_batch50": batch50("q0_batch50", 0, BATCH_COUNT // k),
        "q1_batch50": batch50("q1_batch50", 1, BATCH_COUNT // k),
        "embedded_q0": single("embedded_q0", 0, EMBEDDED_COUNT // k),
        "embedded_q1": single("embedded_q1", 1, EMBEDDED_COUNT // k),
    }


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / name).read_text())
    return data


def client_config(workdir: Path, mqtt_port: int, store_url: str, client_id: str, admin_port: int) -> Path:
    """The shipped external config, pointed at the benchmark's Mosquitto and VictoriaMetrics."""
    cfg = _load("gateway.external.yaml")
    cfg["data_dir"] = str(workdir / "data")
    cfg["log"] = {"level": "warning", "format": "json"}
    cfg["ingress"].update(host="127.0.0.1", port=mqtt_port, client_id=client_id)
    cfg["sinks"]["tsdb"]["url"] = store_url
    cfg["admin"] = {"enabled": True, "host": "127.0.0.1", "port": admin_port}
    cfg["shutdown"] = {"drain_timeout": "60s"}
    return _write(workdir, cfg)


def embedded_config(workdir: Path, mqtt_port: int, admin_port: int) -> Path:
    """The shipped embedded config (amqtt broker inside the gateway, SQLite store) on free ports."""
    cfg = _load("gateway.yaml")
    cfg["data_dir"] = str(workdir / "data")
    cfg["log"] = {"level": "warning", "format": "json"}
    cfg["ingress"].update(host="127.0.0.1", port=mqtt_port)
    cfg["admin"] = {"enabled": True, "host": "127.0.0.1", "port": admin_port}
    cfg["shutdown"] = {"drain_timeout": "60s"}
    return _write(workdir, cfg)


def _write(workdir: Path, cfg: dict[str, Any]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
