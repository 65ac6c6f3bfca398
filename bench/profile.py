"""Sampling profile of the gateway subprocess during a run, with py-spy (optional tool:
`.venv/bin/pip install py-spy`; it needs ptrace rights over the gateway process).

`PySpy.attach(pid)` starts `py-spy record --format raw` (collapsed stacks, which speedscope
and flamegraph.pl open) on the running gateway and returns a function that stops it and
writes the file. `top_costs` reads that file: for every function, the share of samples in
which it was running itself ("self") and the share in which it was on the stack ("total").
Nothing here affects the measured figures of the other runs: the profiled run is a separate,
extra run (py-spy's sampling slows the gateway a little).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpy:
    """One py-spy recording; `error` says why it produced nothing, if it did not."""

    def __init__(self, exe: str, out: Path, rate: int = 200) -> None:
        self.exe = exe
        self.out = out
        self.rate = rate
        self.error = ""

    def attach(self, pid: int) -> Callable[[], None]:
        cmd = [self.exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(self.rate)]
        cmd += ["--output", str(self.out), "--nonblocking"]
        log = self.out.with_suffix(".log")
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)

        def stop() -> None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if not self.out.exists() or self.out.stat().st_size == 0:
                self.error = f"py-spy wrote nothing (exit {proc.returncode}): {log.read_text()[-500:].strip()}"

        return stop


@dataclass(frozen=True, slots=True)
class Cost:
    function: str  # "name (path)"
    self_pct: float
    total_pct: float


def top_costs(raw: Path, n: int = 5) -> list[Cost]:
    """The `n` functions with the most self samples in a collapsed-stack file."""
    own: Counter[str] = Counter()
    on_stack: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        count = int(m["count"])
        frames = [_short(f) for f in m["stack"].split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            on_stack[f] += count
    if total == 0:
        return []
    return [Cost(f, round(100 * c / total, 1), round(100 * on_stack[f] / total, 1)) for f, c in own.most_common(n)]


def _short(frame: str) -> str:
    """'handle (gateway/app.py:72)' → 'handle (gateway/app.py)'; site-packages paths shortened."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"
