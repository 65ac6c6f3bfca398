"""The change detector: device changes → coalesced `Invalidation` events on `invalidations`.

Sources of change:
* metadata (`record_meta`, from a meta topic or the admin endpoint): stored in the
  `MetadataStore` first, then recorded; an unchanged document is no change;
* telemetry (`process`, as a processor on a telemetry subscription): a configured state
  field whose value differs from the last one seen for that device. The last values are
  saved in the state file (`detector_state`) every `state_interval` while they change and at
  stop, and loaded at start, so a change made while the gateway was down is detected by the
  first reading after the start. The first value ever seen for a device is the baseline.

Coalescing: the first change of an id opens a window of `window`; every change of that id
within it joins the same event, sent at the window's end (by `tick`). So an id gets at most
one event per window, and the first change is sent within about one window (plus one tick).

Ordering ("never sent before the change is stored"): a metadata change is committed before
it is recorded. A telemetry change carries its reading's `received_ns`; with `after_sink`
set, its event is held until that sink's `SinkRunner.stored_watermark()` reaches it, i.e.
until the store has settled the reading (and every reading received before it). A store that
is down therefore holds the invalidation back (one pending entry per id, bounded by the
number of devices), and the detector's own subscription keeps flowing meanwhile.

Stop: `flush_pending` (called by the app once the telemetry subscriptions are drained,
before the invalidation forwarders are) sends every pending event without waiting for the
end of its window, except telemetry-caused ones whose reading the store did not settle;
those stay in the state file and are sent after the next start, once the store catches up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from gateway.core.bus import OutgoingMessage
from gateway.core.message import FieldValue, Reading
from gateway.core.metrics import Metrics
from gateway.processors.config import InvalidationConfig
from gateway.processors.detector_state import (
    DetectorState,
    PendingChange,
    load_detector_state,
    write_detector_state,
)
from gateway.processors.events import Invalidation
from gateway.processors.metadata import MetadataStore

INVALIDATIONS_TOPIC = "invalidations"
log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    opened: float  # monotonic
    received_ns: int = 0  # newest telemetry receipt among the changes; 0: nothing to wait for
    sources: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    changes: int = 0


class Coalescer:
    """Pending changes per id; `due` hands out those whose window ended and whose store caught up."""

    def __init__(self, object_type: str, window: timedelta) -> None:
        self.object_type = object_type
        self.window = window.total_seconds()
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, obj_id: str, source: str, fields: Sequence[str], received_ns: int, now: float) -> None:
        p = self._pending.get(obj_id)
        if p is None:
            p = self._pending[obj_id] = _Pending(now)
        p.received_ns = max(p.received_ns, received_ns)
        p.sources.add(source)
        p.fields.update(fields)
        p.changes += 1

    def due(self, now: float, watermark: int | None) -> list[Invalidation]:
        out: list[Invalidation] = []
        for obj_id, p in list(self._pending.items()):
            if now - p.opened < self.window:
                continue
            if watermark is not None and p.received_ns > watermark:
                continue
            del self._pending[obj_id]
            out.append(
                Invalidation(
                    self.object_type, (obj_id,), tuple(sorted(p.sources)), tuple(sorted(p.fields)),
                    p.changes, time.time_ns(), p.received_ns,
                )
            )  # fmt: skip
        return out

    def snapshot(self) -> list[PendingChange]:
        """The pending changes, for the state file."""
        return [
            PendingChange(i, sorted(p.sources), sorted(p.fields), p.changes, p.received_ns)
            for i, p in self._pending.items()
        ]

    def restore(self, change: PendingChange, now: float) -> None:
        """Put back a change from the state file (its window starts again at `now`)."""
        p = self._pending.setdefault(change.id, _Pending(now))
        p.received_ns = max(p.received_ns, change.received_ns)
        p.sources.update(change.sources)
        p.fields.update(change.fields)
        p.changes += change.changes


class ChangeDetector:
    """`Processor` turning device changes into invalidations. Construction does no I/O."""

    output_topic = INVALIDATIONS_TOPIC

    def __init__(
        self,
        config: InvalidationConfig,
        data_dir: Path,
        metrics: Metrics,
        watermark: Callable[[], int] | None = None,
        name: str = "invalidation",
    ) -> None:
        self.name = name
        self.config = config
        self.tick_interval: timedelta | None = timedelta(seconds=min(0.05, config.window.total_seconds() / 4))
        p = Path(config.metadata_db).expanduser()
        self.store = MetadataStore(p if p.is_absolute() else data_dir / p)
        sp = Path(config.state_file).expanduser()
        self.state_path = sp if sp.is_absolute() else data_dir / sp
        self._baselines_dirty = False
        self._saved = time.monotonic()
        self.coalescer = Coalescer(config.object_type, config.window)
        self._metrics = metrics
        self._watermark = watermark
        self._last: dict[tuple[str, str], FieldValue] = {}
        self._state_fields = tuple(config.state_fields)

    def reconfigure(self, config: InvalidationConfig) -> None:
        """Hot reload: state fields and window (the subscription and store path need a restart)."""
        self.config = config
        self._state_fields = tuple(config.state_fields)
        self.coalescer.window = config.window.total_seconds()

    async def record_meta(self, device_id: str, meta: dict[str, Any], source: str) -> bool:
        """Store `meta`; if it changed, record the change (sent after the window). True if changed."""
        changed = await self.store.put(device_id, meta)
        if changed:
            self._metrics.invalidation_changes.labels(source).inc()
            self.coalescer.add(device_id, source, sorted(meta), 0, time.monotonic())
        return changed

    async def start(self) -> None:
        state = await asyncio.to_thread(load_detector_state, self.state_path)
        fields = set(self._state_fields)
        for device, values in state.baselines.items():
            for name, value in values.items():
                if name in fields:
                    self._last.setdefault((device, name), value)
        now = time.monotonic()
        for change in state.pending:
            self.coalescer.restore(change, now)
        self._saved = now

    async def process(self, items: Sequence[Any]) -> list[OutgoingMessage]:
        now = time.monotonic()
        for r in items:
            if not isinstance(r, Reading):
                continue
            changed: list[str] = []
            for name in self._state_fields:
                if name not in r.fields:
                    continue
                value = r.fields[name]
                key = (r.device_id, name)
                prev = self._last.get(key)
                if prev is not None and prev == value:
                    continue
                self._last[key] = value
                self._baselines_dirty = True
                if prev is not None:
                    changed.append(name)
            if changed:
                self._metrics.invalidation_changes.labels("telemetry").inc()
                self.coalescer.add(r.device_id, "telemetry", changed, r.received_ns, now)
        return []

    async def tick(self, now_ns: int) -> list[OutgoingMessage]:
        mark = self._watermark() if self._watermark is not None else None
        now = time.monotonic()
        events = self.coalescer.due(now, mark)
        self._metrics.invalidations_emitted.inc(len(events))
        if self._baselines_dirty and now - self._saved >= self.config.state_interval.total_seconds():
            await self.save()
        return [OutgoingMessage(e, 256, e.ids[0]) for e in events]

    def flush_pending(self, store_settled: bool) -> list[OutgoingMessage]:
        """At stop: every pending event, windows cut short. With an `after_sink`, telemetry-caused
        events still wait for its watermark, and all of them wait if the store did not settle
        everything it was given (`store_settled` False): those stay pending (saved by `save`)."""
        mark = None if self._watermark is None else (self._watermark() if store_settled else 0)
        events = self.coalescer.due(math.inf, mark)
        self._metrics.invalidations_emitted.inc(len(events))
        if len(self.coalescer):
            log.warning(
                "change detector: %d invalidations held back at stop (their readings are not stored yet); "
                "kept in %s, sent after the next start", len(self.coalescer), self.state_path,
            )  # fmt: skip
        return [OutgoingMessage(e, 256, e.ids[0]) for e in events]

    def state(self) -> DetectorState:
        baselines: dict[str, dict[str, FieldValue]] = {}
        for (device, name), value in self._last.items():
            baselines.setdefault(device, {})[name] = value
        return DetectorState(baselines, self.coalescer.snapshot())

    async def save(self) -> None:
        """Write the state file now (a failure is logged; the next save tries again)."""
        state, self._baselines_dirty, self._saved = self.state(), False, time.monotonic()
        try:
            await asyncio.to_thread(write_detector_state, self.state_path, state)
        except OSError as exc:
            self._baselines_dirty = True
            log.error("change detector: cannot write the state file %s: %s", self.state_path, exc)

    async def close(self) -> None:
        await self.save()
        await self.store.close()
