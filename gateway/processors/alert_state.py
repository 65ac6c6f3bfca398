"""The alert state file: firing alerts (what `gateway alerts` reads) and absence last-seen times.

One JSON document, replaced atomically (`state_file.write_atomic`):

    {"updated_ns": ...,
     "firing": [AlertEvent.to_dict(), ...],
     "last_seen": {"<absence rule>": {"fingerprint": "<rule hash>",
                                      "devices": {"<device_id>": {"ns": ..., "tags": {...}}}}}}

The alert engine writes it on every change of the firing set, every `state_interval` while
last-seen times move, and at stop; it loads it at start, so a restart neither forgets nor
re-fires a firing alert, and a device that went silent before (or during) the restart is
still reported offline. Last-seen times are restored only for an absence rule whose
definition is unchanged (same `fingerprint`), like a hot reload. A corrupt file is logged,
moved aside and ignored at start (`load_state`); `read_state` (the CLI) raises instead.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.processors.events import AlertEvent
from gateway.processors.state_file import load_or_ignore, read_doc, write_atomic


@dataclass(slots=True)
class Seen:
    """When a device was last seen by an absence rule, and its tags then."""

    ns: int
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class AlertState:
    firing: list[AlertEvent] = field(default_factory=list)
    # absence rule -> (fingerprint of the rule, device -> last seen)
    last_seen: dict[str, tuple[str, dict[str, Seen]]] = field(default_factory=dict)


def rule_fingerprint(rule: BaseModel) -> str:
    return hashlib.sha256(rule.model_dump_json().encode()).hexdigest()[:16]


def write_state(path: Path, state: AlertState) -> None:
    doc = {
        "updated_ns": time.time_ns(),
        "firing": [e.to_dict() for e in state.firing],
        "last_seen": {
            rule: {"fingerprint": fp, "devices": {d: {"ns": s.ns, "tags": s.tags} for d, s in devices.items()}}
            for rule, (fp, devices) in state.last_seen.items()
        },
    }
    write_atomic(path, doc)


def parse_state(doc: dict[str, Any]) -> AlertState:
    """Raises KeyError/TypeError/ValueError/AttributeError on a malformed document."""
    firing = [AlertEvent.from_dict(d) for d in doc.get("firing") or []]
    last_seen: dict[str, tuple[str, dict[str, Seen]]] = {}
    for rule, entry in dict(doc.get("last_seen") or {}).items():
        devices = {
            str(d): Seen(int(s["ns"]), {str(k): str(v) for k, v in dict(s.get("tags") or {}).items()})
            for d, s in dict(entry["devices"]).items()
        }
        last_seen[str(rule)] = (str(entry["fingerprint"]), devices)
    return AlertState(firing, last_seen)


def read_state(path: Path) -> list[AlertEvent]:
    """The firing alerts recorded in `path`; [] if it does not exist. Raises ValueError if unreadable."""
    doc = read_doc(path)
    if doc is None:
        return []
    try:
        return parse_state(doc).firing
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"alert state file {path} is not readable: {exc!r}") from None


def load_state(path: Path) -> AlertState:
    """The state in `path` for the engine's start: empty if missing; corrupt: logged, moved aside, ignored."""
    return load_or_ignore(path, "alert engine", parse_state) or AlertState()
