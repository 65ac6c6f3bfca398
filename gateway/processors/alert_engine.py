"""The alert engine: a processor from `telemetry` readings to `alerts` events.

For each rule (see `gateway.processors.rules`) and each device the rule selects, one alert
goes through `ok` → (`pending` while `for:` runs) → `firing` → `ok`. Guarantees:

* One `firing` event per episode: a firing alert is never fired again until it has resolved;
  then a `resolved` event with the same `alert_id` (stable per rule and device).
* Flapping is damped by `for:` (the condition must hold in every reading for that long) and by
  the clearing threshold (a firing alert resolves only past it).
* Threshold and rate rules run in reading time; a reading older than the newest one already
  evaluated for that rule and device is skipped. Absence rules run on the wall clock, every
  `check_interval`, for devices seen since the start (or firing in the state file).
* Firing alerts are written to the state file on every change (`alert_state`) and restored
  at start, so a restart neither forgets nor re-fires them (a restored alert resolves on the
  first reading past its clearing threshold). An alert restored for a rule that no longer
  exists is resolved at start; so are the alerts of a rule that a reload removes or changes
  (their state starts afresh).
* Last-seen times of absence rules go to the same file every `state_interval` (while they
  move) and at stop, and are restored for unchanged rules, so a device that goes silent
  around a restart is still reported offline (after `after` from its last reading). A corrupt
  state file is logged, moved aside and ignored.
* A reading that breaks an evaluation (a bug) is logged and skipped; it never stalls the
  subscription.

Not kept across restarts: pending `for:` timers and rate windows (they start afresh).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from gateway.core.bus import OutgoingMessage
from gateway.core.message import Reading
from gateway.core.metrics import Metrics
from gateway.processors.alert_state import AlertState, Seen, load_state, rule_fingerprint, write_state
from gateway.processors.config import AlertsConfig
from gateway.processors.events import AlertEvent
from gateway.processors.rules import AbsenceRule, AlertRule, RateRule, ThresholdRule

log = logging.getLogger(__name__)
ALERTS_TOPIC = "alerts"


def alert_id(rule: str, device_id: str) -> str:
    return hashlib.sha256(f"{rule}\0{device_id}".encode()).hexdigest()[:16]


class _Tags(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass(slots=True)
class _Track:
    state: str = "ok"  # ok | pending | firing
    pending_since: int = 0
    last_time_ns: int = 0
    last_seen_ns: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    window: deque[tuple[int, float]] = field(default_factory=deque)
    event: AlertEvent | None = None


class AlertEngine:
    """`Processor` evaluating alert rules. Construction does no I/O; `start` reads the state file."""

    output_topic = ALERTS_TOPIC

    def __init__(self, config: AlertsConfig, state_path: Path, metrics: Metrics, name: str = "alerts") -> None:
        self.name = name
        self.tick_interval: timedelta | None = config.check_interval
        self.state_path = state_path
        self._metrics = metrics
        self._rules: dict[str, AlertRule] = dict(config.rules)
        self._tracks: dict[str, dict[str, _Track]] = {n: {} for n in self._rules}
        self._outbox: list[AlertEvent] = []
        self._dirty = False
        self._seen_dirty = False  # last-seen times moved since the last save
        self._state_interval = int(config.state_interval.total_seconds() * 1e9)
        self._saved_ns = 0

    # -- Processor ----------------------------------------------------------------------
    async def start(self) -> None:
        state = await asyncio.to_thread(load_state, self.state_path)
        now = self._saved_ns = time.time_ns()
        for name, (fingerprint, devices) in state.last_seen.items():
            rule = self._rules.get(name)
            if isinstance(rule, AbsenceRule) and rule_fingerprint(rule) == fingerprint:
                for device, seen in devices.items():
                    self._tracks[name][device] = _Track(last_seen_ns=seen.ns, tags=seen.tags)
        for ev in state.firing:
            rule = self._rules.get(ev.rule)
            if rule is None:
                self._outbox.append(replace(ev, status="resolved", time_ns=now))
                self._dirty = True
                continue
            seen_ns = self._tracks[ev.rule].get(ev.device_id, _Track(last_seen_ns=now)).last_seen_ns
            self._tracks[ev.rule][ev.device_id] = _Track("firing", last_seen_ns=seen_ns, tags=ev.tags, event=ev)
        self._update_gauges()

    async def process(self, items: Sequence[Any]) -> list[OutgoingMessage]:
        out: list[AlertEvent] = []
        for item in items:
            if not isinstance(item, Reading):
                continue
            try:
                self._evaluate(item, out)
            except Exception:
                log.exception("alert engine: evaluating a reading failed; skipped", extra={"device": item.device_id})
        now = time.time_ns()
        for e in out:  # caused by a reading: latency from its receipt to the decision
            if e.received_ns:
                self._metrics.alert_latency.labels(e.rule).observe(max(0, now - e.received_ns) / 1e9)
        return await self._emit(out)

    async def tick(self, now_ns: int) -> list[OutgoingMessage]:
        out, self._outbox = self._outbox, []
        for rule in self._rules.values():
            if not isinstance(rule, AbsenceRule):
                continue
            after = int(rule.after.total_seconds() * 1e9)
            evals = self._metrics.alert_evaluations.labels(rule.name)
            for device, track in self._tracks[rule.name].items():
                evals.inc()
                if track.state != "firing" and now_ns - track.last_seen_ns >= after:
                    self._fire(rule, device, track, None, now_ns, track.last_seen_ns, out)
        if self._seen_dirty and now_ns - self._saved_ns >= self._state_interval:
            self._dirty = True  # periodic save of the last-seen times, by `_emit`
        return await self._emit(out)

    async def close(self) -> None:
        if self._dirty or self._seen_dirty:
            await self._save()

    # -- queries and reload ---------------------------------------------------------------
    def firing(self) -> list[AlertEvent]:
        return [t.event for tracks in self._tracks.values() for t in tracks.values() if t.event is not None]

    def replace_rules(self, rules: dict[str, AlertRule]) -> None:
        """Swap the rule set (hot reload). Unchanged rules keep their state; the firing alerts of
        removed or changed rules are resolved (sent with the next tick)."""
        now = time.time_ns()
        for name, old in self._rules.items():
            if rules.get(name) == old:
                continue
            for track in self._tracks.pop(name, {}).values():
                if track.event is not None:
                    self._outbox.append(replace(track.event, status="resolved", time_ns=now))
                    self._metrics.alerts_resolved.labels(name).inc()
                    self._dirty = True
        self._rules = dict(rules)
        for name in self._rules:
            self._tracks.setdefault(name, {})
        self._update_gauges()

    # -- evaluation -----------------------------------------------------------------------
    def _evaluate(self, r: Reading, out: list[AlertEvent]) -> None:
        for rule in self._rules.values():
            if not rule.select.matches(r):
                continue
            tracks = self._tracks[rule.name]
            track = tracks.get(r.device_id)
            if track is None:
                track = tracks[r.device_id] = _Track()
            track.tags = r.tags
            if isinstance(rule, AbsenceRule):
                self._metrics.alert_evaluations.labels(rule.name).inc()
                track.last_seen_ns = r.received_ns or time.time_ns()
                self._seen_dirty = True
                if track.state == "firing":
                    self._resolve(rule, track, None, r.time_ns, r.received_ns, out)
                continue
            v = r.fields.get(rule.field)
            if isinstance(v, bool) or not isinstance(v, int | float) or r.time_ns < track.last_time_ns:
                continue
            self._metrics.alert_evaluations.labels(rule.name).inc()
            track.last_time_ns = r.time_ns
            value = float(v)
            if isinstance(rule, RateRule):
                rate = self._rate(rule, track, r.time_ns, value)
                if rate is None:
                    continue
                value = rate
            self._step(rule, r.device_id, track, value, r, out)

    @staticmethod
    def _rate(rule: RateRule, track: _Track, t: int, v: float) -> float | None:
        w = track.window
        w.append((t, v))
        horizon = t - int(rule.window.total_seconds() * 1e9)
        while w[0][0] < horizon:  # the newest point (t) is always within the window
            w.popleft()
        t0, v0 = w[0]
        return None if t <= t0 else (v - v0) / ((t - t0) / 1e9)

    def _step(
        self, rule: ThresholdRule | RateRule, device: str, track: _Track, v: float, r: Reading, out: list[AlertEvent]
    ) -> None:
        if track.state == "firing":
            if rule.clears(v):
                self._resolve(rule, track, v, r.time_ns, r.received_ns, out)
            return
        if not rule.breaches(v):
            track.state = "ok"
            return
        if track.state == "ok":
            track.state, track.pending_since = "pending", r.time_ns
        if r.time_ns - track.pending_since >= int(rule.for_.total_seconds() * 1e9):
            self._fire(rule, device, track, v, r.time_ns, r.received_ns, out)

    def _fire(
        self, rule: AlertRule, device: str, track: _Track, v: float | None, t: int, received: int, out: list[AlertEvent]
    ) -> None:
        status = "firing"
        threshold = str(rule.after) if isinstance(rule, AbsenceRule) else rule.threshold_text()
        names: dict[str, Any] = {
            "rule": rule.name,
            "device_id": device,
            "severity": rule.severity,
            "status": status,
            "field": getattr(rule, "field", ""),
            "value": "" if v is None else f"{v:g}",
            "threshold": threshold,
            "tags": _Tags(track.tags),
        }
        try:
            summary = rule.summary.format_map(names)
        except (KeyError, IndexError, ValueError, AttributeError):
            summary = rule.summary
        track.state = "firing"
        track.event = AlertEvent(
            alert_id(rule.name, device), rule.name, "firing", device, rule.severity, summary,
            dict(rule.labels), dict(track.tags), v, t, t, received,
        )  # fmt: skip
        out.append(track.event)
        self._metrics.alerts_fired.labels(rule.name).inc()

    def _resolve(
        self, rule: AlertRule, track: _Track, v: float | None, t: int, received: int, out: list[AlertEvent]
    ) -> None:
        assert track.event is not None
        out.append(replace(track.event, status="resolved", value=v, time_ns=t, received_ns=received))
        track.state, track.event, track.window = "ok", None, deque()
        self._metrics.alerts_resolved.labels(rule.name).inc()

    async def _emit(self, events: list[AlertEvent]) -> list[OutgoingMessage]:
        if events or self._dirty:
            self._update_gauges()
            await self._save()
        return [OutgoingMessage(e, 512 + len(e.summary), e.device_id) for e in events]

    def state(self) -> AlertState:
        """What the state file holds: firing alerts and the last-seen times of absence rules."""
        last_seen: dict[str, tuple[str, dict[str, Seen]]] = {}
        for name, rule in self._rules.items():
            if isinstance(rule, AbsenceRule):
                devices = {d: Seen(t.last_seen_ns, dict(t.tags)) for d, t in self._tracks[name].items()}
                last_seen[name] = (rule_fingerprint(rule), devices)
        return AlertState(self.firing(), last_seen)

    async def _save(self) -> None:
        state, self._seen_dirty = self.state(), False
        try:
            await asyncio.to_thread(write_state, self.state_path, state)
            self._dirty, self._saved_ns = False, time.time_ns()
        except OSError as exc:
            self._seen_dirty = True
            self._dirty = True
            log.error("alert engine: cannot write the state file %s: %s", self.state_path, exc)

    def _update_gauges(self) -> None:
        for name, tracks in self._tracks.items():
            self._metrics.alerts_firing.labels(name).set(sum(t.event is not None for t in tracks.values()))
