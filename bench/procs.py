"""What every benchmark run shares: its result record, its environment (servers, log), the
simulator as a subprocess, and starting and reaping consumer subprocesses with their rusage.

`RunResult.msgs_per_s`/`readings_per_s` are 0 for a failed run (`ok=False`), so a failed run
can never count as fast. `wait_rusage` reaps a child itself (os.wait4) to get its CPU time and
peak RSS; the `Popen` object must not be waited on afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.workloads import MEASURE_FIELD, Workload
from tests.servers import Mosquitto, VictoriaMetrics, env_without_proxies

Log = Callable[[str], None]


@dataclass(slots=True)
class RunResult:
    system: str
    workload: str
    messages: int
    readings: int
    received: int  # messages the consumer got
    stored: int | None  # readings counted in the store afterwards (None: the consumer stores nothing)
    seconds: float
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    sim_rate: float | None = None  # msg/s the simulator achieved publishing
    ok: bool = True
    note: str = ""
    p50_steady_ms: float | None = None  # paced runs: readings stored after the warm-up only
    p99_steady_ms: float | None = None

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.ok and self.seconds > 0 else 0.0

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds if self.ok and self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "msgs_per_s": round(self.msgs_per_s, 1), "readings_per_s": round(self.readings_per_s)}


@dataclass(slots=True)
class Env:
    workdir: Path
    mosquitto: Mosquitto
    victoria: VictoriaMetrics
    log: Log
    profiler: Callable[[int], Callable[[], None]] | None = None  # attach to a pid; returns "stop"


def run_timeout(w: Workload) -> float:
    return 60 + w.readings / 2_000


def start_process(cmd: list[str], log_path: Path, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdout=stdout, stderr=log_path.open("a"), text=True, env=env_without_proxies())


def wait_ready(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{what} did not start (exit {proc.wait(5)})")


def wait_rusage(proc: subprocess.Popen[str], timeout: float) -> tuple[int | None, float, float]:
    """Reap `proc` within `timeout` (else kill it): exit code (None if killed), CPU s, peak RSS MiB."""
    deadline = time.monotonic() + timeout
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline and not killed:
            proc.kill()
            killed = True
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (None if killed else proc.returncode), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


class Sim:
    """device-sim publishing workload `w` to `port`, devices named `prefix`NNNNN."""

    def __init__(self, w: Workload, port: int, prefix: str, wd: Path) -> None:
        self.summary = wd / "sim.json"
        self.proc = start_process(w.sim_command(port, prefix, self.summary), wd / "sim.log", subprocess.DEVNULL)
        self.w = w
        self.started_ns: int | None = None  # wall clock of its first publish, known after `finish`

    def finish(self, timeout: float) -> float | None:
        """Wait for the simulator; its achieved msg/s, or None if it failed."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        if code != 0 or not self.summary.exists():
            return None
        summary = orjson.loads(self.summary.read_bytes())
        self.started_ns = int(summary["started_ns"])
        return float(summary["achieved_rate"])


def workdir_for(env: Env, system: str, w: Workload) -> Path:
    wd = env.workdir / f"{w.name}-{system}"
    wd.mkdir(parents=True, exist_ok=True)
    return wd


def device_prefix(system: str, w: Workload) -> str:
    return f"{w.name.replace('_', '')}-{system.replace('_', '')}-"


def vm_match(prefix: str) -> str:
    return f'environment_{MEASURE_FIELD}{{device_id=~"{prefix}.*"}}'
