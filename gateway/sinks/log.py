"""The log forwarder: each alert or invalidation becomes one structured log line.

Always accepts (logging does not fail in a way the sink could see). Alerts are logged at
`level` (critical alerts at least at warning); the event's fields go into the record's
structured fields (`log.format: json` keeps them as JSON keys). Items that are not events
are rejected (dead-lettered) with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from gateway.core.sink import WriteResult
from gateway.processors.events import AlertEvent
from gateway.sinks.forwarder import ForwarderConfigBase, event_dict

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LogSinkConfig(ForwarderConfigBase):
    type: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level of the events.")
    logger: str = Field("gateway.events", min_length=1, description="Logger name.")


class LogSink:
    def __init__(self, config: LogSinkConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self._log = logging.getLogger(config.logger)
        self._level = _LEVELS[config.level]

    def reconfigure(self, config: LogSinkConfig) -> None:
        self.config = config
        self._log = logging.getLogger(config.logger)
        self._level = _LEVELS[config.level]

    async def start(self) -> None:
        return None

    async def write(self, items: Sequence[Any]) -> WriteResult:
        result = WriteResult()
        for i, item in enumerate(items):
            try:
                doc = event_dict(item)
            except TypeError as exc:
                result.rejected[i] = str(exc)
                continue
            level = self._level
            if isinstance(item, AlertEvent):
                if item.severity == "critical":
                    level = max(level, logging.WARNING)
                msg = f"alert {item.status}: {item.summary}"
            else:
                msg = f"invalidate {doc['object_type']} {', '.join(doc['ids'])}"
            self._log.log(level, msg, extra={"event": doc, "sink": self.name})
            result.accepted.append(i)
        return result

    async def close(self) -> None:
        return None

    def healthy(self) -> bool:
        return True
