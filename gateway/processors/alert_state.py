"""The state file of firing alerts: what `gateway alerts` reads while the gateway runs or not.

One JSON document `{"updated_ns": ..., "firing": [AlertEvent.to_dict(), ...]}`, replaced
atomically (write to a temporary file in the same folder, fsync, rename) on every change,
so a reader sees the previous or the next state, never a torn one. The alert engine also
reads it at start, so alerts that were firing stay firing (and are not fired again).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from gateway.processors.events import AlertEvent


def write_state(path: Path, firing: list[AlertEvent]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"updated_ns": time.time_ns(), "firing": [e.to_dict() for e in firing]}
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_state(path: Path) -> list[AlertEvent]:
    """The firing alerts recorded in `path`; [] if it does not exist. Raises ValueError if unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        doc = orjson.loads(raw)
        return [AlertEvent.from_dict(d) for d in doc.get("firing", [])]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"alert state file {path} is not readable: {exc}") from None
