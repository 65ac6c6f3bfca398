"""Hot reload of the operator config (SIGHUP, or a change of the file seen by `watch`).

`reload()` reads and fully validates the file with `load_settings` (every check
`gateway check-config` makes). A file that fails is rejected: the precise message is
logged, `gateway_config_reloads_total{result="rejected"}` counts it, and everything in
force stays in force. A good file applies what can change live:

* alert rules (`alerts.rules`; see `AlertEngine.replace_rules`),
* the change detector's `state_fields` and `window`,
* the settings of existing sinks that can `reconfigure` (the forwarders: webhook URL and
  secret, MQTT topic/QoS/retain, Redis channel and keys, log level), same name and type.

Anything else that differs (ingress, routes, schemas, subscriptions, added or removed
sinks, ...) is named in a warning as needing a restart and is not applied. `ok` is counted
either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from gateway.config_errors import ConfigError
from gateway.core.metrics import Metrics
from gateway.processors.alert_engine import AlertEngine
from gateway.processors.invalidation import ChangeDetector

log = logging.getLogger("gateway.reload")
_LIVE_SECTIONS = ("alerts", "invalidation", "sinks")


class ConfigReloader:
    def __init__(
        self,
        path: Path,
        settings: Any,
        engine: AlertEngine | None,
        detector: ChangeDetector | None,
        sinks: dict[str, Any],
        metrics: Metrics,
    ) -> None:
        self.path = path
        self.settings = settings
        self._engine = engine
        self._detector = detector
        self._sinks = sinks
        self._metrics = metrics
        self._mtime = self._stat()

    def reload(self) -> bool:
        """Apply the file if it is valid; True if it was. Never raises for a bad file."""
        from gateway.settings import load_settings

        self._mtime = self._stat()
        try:
            new = load_settings(self.path)
        except ConfigError as exc:
            self._metrics.config_reloads.labels("rejected").inc()
            log.error("config reload rejected, the running config stays in force:\n%s", exc)
            return False
        old = self.settings
        restart = [k for k in type(old).model_fields if k not in _LIVE_SECTIONS and getattr(old, k) != getattr(new, k)]
        if self._engine is not None and new.alerts is not None:
            self._engine.replace_rules(dict(new.alerts.rules))
            if new.alerts.model_copy(update={"rules": {}}) != old.alerts.model_copy(update={"rules": {}}):
                restart.append("alerts (other than rules)")
        elif (old.alerts is None) != (new.alerts is None):
            restart.append("alerts")
        if self._detector is not None and new.invalidation is not None:
            self._detector.reconfigure(new.invalidation)
        elif (old.invalidation is None) != (new.invalidation is None):
            restart.append("invalidation")
        if set(old.sinks) != set(new.sinks):
            restart.append("sinks (added or removed)")
        for name, cfg in new.sinks.items():
            before = old.sinks.get(name)
            if before is None or before == cfg:
                continue
            sink = self._sinks.get(name)
            same_wiring = type(before) is type(cfg) and (before.subscription, before.runner) == (
                cfg.subscription,
                cfg.runner,
            )
            if same_wiring and sink is not None and hasattr(sink, "reconfigure"):
                sink.reconfigure(cfg)
            else:
                restart.append(f"sinks.{name}")
        self.settings = new
        self._metrics.config_reloads.labels("ok").inc()
        extra = {"needs_restart": restart} if restart else {}
        log.info("config reloaded from %s", self.path, extra=extra)
        if restart:
            log.warning("config changes that need a restart were not applied: %s", ", ".join(restart))
        return True

    async def watch(self, interval: float) -> None:
        """Reload whenever the file's modification time changes (checked every `interval` s)."""
        while True:
            await asyncio.sleep(interval)
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                self.reload()

    def _stat(self) -> int | None:
        with contextlib.suppress(OSError):
            return self.path.stat().st_mtime_ns
        return None
