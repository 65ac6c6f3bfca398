"""Admin endpoint routes of the processors (hooked into `gateway.admin.server.AdminServer`):

* `GET /alerts`: `{"firing": [alert, ...]}`, the alerts firing now (404 without `alerts`).
* `GET /devices/{id}/meta`: the stored metadata of a device (404 if none).
* `PUT /devices/{id}/meta` with a JSON object body: stores it, and if it changed records an
  invalidation (sent after the coalescing window, after the store committed). Answers 200
  `{"device_id": ..., "changed": true|false}`, 400 for a body that is not a JSON object,
  404 without an `invalidation` section.
"""

from __future__ import annotations

import re
import urllib.parse

import orjson

from gateway.admin.server import RouteHook
from gateway.processors.alert_engine import AlertEngine
from gateway.processors.invalidation import ChangeDetector
from gateway.processors.metadata import MetadataError, parse_meta

_DEVICE_META = re.compile(r"/devices/([^/]+)/meta")
_JSON = "application/json"

Answer = tuple[int, bytes, str]


def _error(status: int, text: str) -> Answer:
    return status, orjson.dumps({"error": text}), _JSON


def processor_routes(engine: AlertEngine | None, detector: ChangeDetector | None) -> RouteHook:
    async def hook(method: str, target: str, body: bytes) -> Answer | None:
        if target == "/alerts" and method in ("GET", "HEAD"):
            if engine is None:
                return _error(404, "no alerts section in the config")
            return 200, orjson.dumps({"firing": [e.to_dict() for e in engine.firing()]}), _JSON
        m = _DEVICE_META.fullmatch(target)
        if m is None:
            return None
        if detector is None:
            return _error(404, "no invalidation section in the config")
        device_id = urllib.parse.unquote(m.group(1))
        if method == "PUT":
            try:
                meta = parse_meta(body)
            except MetadataError as exc:
                return _error(400, str(exc))
            changed = await detector.record_meta(device_id, meta, "admin")
            return 200, orjson.dumps({"device_id": device_id, "changed": changed}), _JSON
        if method in ("GET", "HEAD"):
            stored = await detector.store.get(device_id)
            if stored is None:
                return _error(404, f"no metadata for device {device_id!r}")
            return 200, orjson.dumps(stored), _JSON
        return None

    return hook
