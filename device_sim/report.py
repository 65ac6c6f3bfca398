"""What the user sees: the live status line and the final summary (text and JSON).

The status line is written to stderr once a second while messages are being sent: on a
TTY it rewrites one line in place (`\\r`), otherwise (with `--progress`) it prints one line
per second. It shows elapsed time, the rate over the last second, and the running totals.
The summary text goes to stdout; `write_json` writes `Summary.to_dict()` atomically (a
temporary file renamed into place), so a reader never sees half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import orjson

from device_sim.stats import Summary

Totals = tuple[int, int, int]  # sent, acknowledged, failed
STATUS_EVERY_S = 1.0


def format_status(elapsed_s: float, rate: float, totals: Totals) -> str:
    sent, acked, failed = totals
    return f"{elapsed_s:7.1f}s  rate {rate:>9,.0f}/s  sent {sent:>11,}  acked {acked:>11,}  errors {failed:>7,}"


class StatusLine:
    """Prints the totals returned by `totals()` every second until `stop()` is called."""

    def __init__(self, totals: Callable[[], Totals], stream: TextIO | None = None) -> None:
        self._totals = totals
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._task: asyncio.Task[None] | None = None
        self._printed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        started = time.monotonic()
        last_sent, last_time = self._totals()[0], started
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            now = time.monotonic()
            totals = self._totals()
            rate = (totals[0] - last_sent) / max(now - last_time, 1e-9)
            last_sent, last_time = totals[0], now
            self._write(format_status(now - started, rate, totals))

    def _write(self, line: str) -> None:
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._printed = True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._tty and self._printed:
            self._stream.write("\n")
            self._stream.flush()


def format_summary(summary: Summary) -> str:
    """A few human lines for the end of a run."""

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} ms"

    lines = [
        f"device-sim: {summary.mode}, {summary.devices:,} devices over {summary.connections:,} connections"
        + (f" in {summary.processes} processes" if summary.processes > 1 else "")
        + f", QoS {summary.qos}"
        + (" (interrupted)" if summary.interrupted else ""),
        f"  sent {summary.sent:,}  acknowledged {summary.acknowledged:,}  failed {summary.failed:,}"
        f"  readings {summary.readings:,}  reconnects {summary.reconnects:,}",
        f"  duration {summary.duration_s:.2f} s  achieved {summary.achieved_rate:,.0f} msg/s"
        f"  latency p50 {ms(summary.latency_p50_ms)}  p99 {ms(summary.latency_p99_ms)}",
    ]
    if summary.bad_by_kind:
        kinds = "  ".join(f"{kind} {n:,}" for kind, n in summary.bad_by_kind.items())
        lines.append(f"  bad messages: {kinds}")
    return "\n".join(lines)


def write_json(summary: Summary, path: Path) -> None:
    """Write the summary as a JSON object to `path` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    partial.replace(path)
