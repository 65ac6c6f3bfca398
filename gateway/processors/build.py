"""Building the processors (alert engine, change detector) and their runners from settings (no I/O).

Each processor is wrapped in a `ProcessorSink` and driven by a `SinkRunner` on its
telemetry subscription, like any sink. The change detector gets the stored watermark of the
sink named by `invalidation.after_sink` (see `gateway.processors.invalidation`).

At stop the app calls `Processors.flush` once the telemetry subscriptions are drained (the
processors and the store are stopped) and before the forwarders of `alerts` and
`invalidations` are: the detector's pending invalidations then go out with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.bus import Bus
from gateway.core.metrics import Metrics
from gateway.core.processor import ProcessorSink
from gateway.core.sink_runner import SinkRunner
from gateway.processors.alert_engine import AlertEngine
from gateway.processors.invalidation import INVALIDATIONS_TOPIC, ChangeDetector
from gateway.processors.meta_topics import MetaTopics


@dataclass(slots=True)
class Processors:
    engine: AlertEngine | None = None
    detector: ChangeDetector | None = None
    meta: MetaTopics = field(default_factory=lambda: MetaTopics([]))
    runners: list[SinkRunner] = field(default_factory=list)
    standalone: list[ProcessorSink] = field(default_factory=list)  # no subscription: started by the app
    after_sink: SinkRunner | None = None  # the store that telemetry-caused invalidations wait for

    async def flush(self, bus: Bus) -> None:
        """Publish the detector's pending invalidations (at stop, see the module docstring), then
        save its state (what was held back included)."""
        if self.detector is None:
            return
        settled = self.after_sink is None or bus.stats(self.after_sink.subscription).backlog == 0
        events = self.detector.flush_pending(settled)
        if events:
            await bus.publish(INVALIDATIONS_TOPIC, events)
        await self.detector.save()


def state_path(settings: Any) -> Path | None:
    """The alert state file of these settings, or None without an alerts section."""
    if settings.alerts is None:
        return None
    p = Path(settings.alerts.state_file).expanduser()
    return p if p.is_absolute() else Path(settings.data_dir) / p


def build_processors(settings: Any, bus: Bus, metrics: Metrics, sink_runners: list[SinkRunner]) -> Processors:
    out = Processors()
    alerts = settings.alerts
    if alerts is not None:
        path = state_path(settings)
        assert path is not None
        out.engine = AlertEngine(alerts, path, metrics)
        sink = ProcessorSink(out.engine, bus)
        out.runners.append(SinkRunner(sink, bus, alerts.subscription, metrics, alerts.runner))
    inv = settings.invalidation
    if inv is not None:
        after = next((r for r in sink_runners if r.name == inv.after_sink), None) if inv.after_sink else None
        out.after_sink = after
        out.detector = ChangeDetector(
            inv, Path(settings.data_dir), metrics, after.stored_watermark if after is not None else None
        )
        out.meta = MetaTopics(inv.meta_topics)
        sink = ProcessorSink(out.detector, bus)
        if inv.subscription is not None:
            out.runners.append(SinkRunner(sink, bus, inv.subscription, metrics, inv.runner))
        else:
            out.standalone.append(sink)
    return out
