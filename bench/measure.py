"""Measurements for the benchmark: a process's CPU time and memory, the gateway's /metrics,
histogram quantiles, the machine description, and waiting with a deadline.

Guarantees: `proc_sample` reads Linux /proc only (utime+stime of the process itself, not of
its children; VmHWM is the peak resident set since the process started). Quantiles follow
Prometheus' `histogram_quantile`: linear interpolation inside the bucket that holds the rank,
so they are only as precise as the bucket bounds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU seconds used so far (user + system), current and peak resident set in MiB."""

    cpu_s: float
    rss_mib: float
    peak_rss_mib: float


def proc_sample(pid: int) -> ProcSample:
    """Read /proc/<pid>/stat and /proc/<pid>/status; raises OSError once the process is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14 and 15 of stat)
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return ProcSample(cpu, rss, hwm)


class MetricsSnapshot:
    """One scrape of a Prometheus text endpoint."""

    def __init__(self, text: str) -> None:
        self._samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self._samples.append((s.name, dict(s.labels), float(s.value)))

    @classmethod
    def scrape(cls, url: str, timeout: float = 5.0) -> MetricsSnapshot:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return cls(r.read().decode())

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
        return sum(v for n, lab, v in self._samples if n == name and labels.items() <= lab.items())

    def buckets(self, histogram: str, **labels: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram, summed over matching series, sorted."""
        acc: dict[float, float] = {}
        for n, lab, v in self._samples:
            if n == histogram + "_bucket" and labels.items() <= lab.items():
                le = float(lab["le"])
                acc[le] = acc.get(le, 0.0) + v
        return sorted(acc.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile (0..1) of cumulative buckets, as Prometheus computes it; None when empty.
    A rank in the +Inf bucket returns the highest finite bound (a lower bound of the truth)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def machine_info() -> dict[str, str]:
    """nproc, CPU model (/proc/cpuinfo), memory, OS, Python version, and the date (UTC)."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    nproc = str(os.cpu_count())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "nproc": nproc,
        "cpu_model": model,
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": load,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def tool_version(command: list[str]) -> str:
    """First line a tool prints for its version (stdout or stderr), or 'unknown'."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        for line in (out.stdout + out.stderr).splitlines():
            if line.strip():
                return line.strip()
    return "unknown"
