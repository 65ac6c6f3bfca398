"""The change detector's state file: state-field baselines and invalidations not sent yet.

One JSON document in data_dir (`invalidation.state_file`), replaced atomically
(`state_file.write_atomic`):

    {"updated_ns": ...,
     "baselines": {"<device_id>": {"<state field>": <last value>, ...}, ...},
     "pending": [{"id": ..., "sources": [...], "fields": [...], "changes": n, "received_ns": ...}, ...]}

`baselines` lets a restarted detector see a change of, say, the firmware version that
happened while it was down (the first reading after the start is compared with the saved
value instead of becoming the baseline). `pending` holds the invalidations that could not be
sent at stop because the store had not stored their readings; they are sent after the next
start, once the store's watermark passes them. A corrupt file is logged, moved aside and
ignored (`load_detector_state`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.message import FieldValue
from gateway.processors.state_file import load_or_ignore, write_atomic


@dataclass(slots=True)
class PendingChange:
    """Coalesced changes of one id, waiting for the end of their window or for the store."""

    id: str
    sources: list[str]
    fields: list[str]
    changes: int
    received_ns: int


@dataclass(slots=True)
class DetectorState:
    baselines: dict[str, dict[str, FieldValue]] = field(default_factory=dict)
    pending: list[PendingChange] = field(default_factory=list)


def _value(v: Any) -> FieldValue:
    if isinstance(v, bool | int | float | str):
        return v
    raise TypeError(f"a baseline must be a number, string or boolean, not {type(v).__name__}")


def parse_detector_state(doc: dict[str, Any]) -> DetectorState:
    """Raises KeyError/TypeError/ValueError/AttributeError on a malformed document."""
    baselines = {
        str(device): {str(f): _value(v) for f, v in dict(values).items()}
        for device, values in dict(doc.get("baselines") or {}).items()
    }
    pending = [
        PendingChange(
            str(p["id"]),
            [str(s) for s in p["sources"]],
            [str(f) for f in p["fields"]],
            int(p["changes"]),
            int(p["received_ns"]),
        )
        for p in doc.get("pending") or []
    ]
    return DetectorState(baselines, pending)


def write_detector_state(path: Path, state: DetectorState) -> None:
    write_atomic(
        path,
        {
            "updated_ns": time.time_ns(),
            "baselines": state.baselines,
            "pending": [
                {
                    "id": c.id,
                    "sources": c.sources,
                    "fields": c.fields,
                    "changes": c.changes,
                    "received_ns": c.received_ns,
                }
                for c in state.pending
            ],
        },
    )


def load_detector_state(path: Path) -> DetectorState:
    """The state in `path`: empty if missing; corrupt: logged, moved aside, ignored."""
    return load_or_ignore(path, "change detector", parse_detector_state) or DetectorState()
