"""Admin endpoint routes for replay (hooked into `gateway.admin.server.AdminServer` by the gateway):

* `POST /subscriptions/{name}/seek` with `{"to": "<time>"}` (`now`, `-2h`, RFC 3339, epoch
  seconds; parsed by the gateway's clock) or `{"time_ns": N}`: `bus.seek` (see
  `gateway.core.seek`). 200 with the `SeekResult` as JSON; 404 for an unknown subscription;
  409 when the bus cannot seek (memory bus); 400 for a bad body or time.
* `POST /deadletters/replay` with `{"code": ..., "since": "<time>", "dry_run": bool,
  "include_replayed": bool}` (all optional): `gateway.replay.Replayer`. 200 with the
  `ReplaySummary`; 404 without a `deadletter_file` sink; 400 for a bad body.

Both answer only once the work is done (a seek is committed; every replayed message is held
by the bus).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING, Any

import orjson

from gateway.admin.server import RouteHook
from gateway.core.bus import BusClosed
from gateway.core.message import RawMessage
from gateway.core.seek import SeekUnsupported, parse_seek_time
from gateway.replay import Replayer, ReplayRequest
from gateway.sinks.config import resolve_data_path
from gateway.sinks.deadletter_file import DeadLetterFileConfig
from gateway.validation.decode import DecodeResult

if TYPE_CHECKING:
    from gateway.app import Gateway

_SEEK = re.compile(r"/subscriptions/([^/]+)/seek")
_JSON = "application/json"

Answer = tuple[int, bytes, str]


def _error(status: int, text: str) -> Answer:
    return status, orjson.dumps({"error": text}), _JSON


def _body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _time(data: dict[str, Any], text_key: str, ns_key: str) -> int | None:
    if data.get(ns_key) is not None:
        value = data[ns_key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{ns_key} must be an integer (epoch nanoseconds)")
        return value
    if data.get(text_key) is not None:
        return parse_seek_time(str(data[text_key]))
    return None


def replay_routes(gateway: Gateway) -> RouteHook:
    """The seek and dead-letter replay routes of `gateway`."""
    files = [s for s in gateway.settings.sinks.values() if isinstance(s, DeadLetterFileConfig)]
    replayer: Replayer | None = None
    if files:
        path = resolve_data_path(files[0].path, gateway.settings.data_dir, "deadletter.jsonl")

        def preview(raw: RawMessage) -> DecodeResult | None:
            meta = gateway.processors.meta
            if meta and gateway.processors.detector is not None and meta.device_of(raw.topic) is not None:
                return None
            return gateway.decoder.decode(raw)

        replayer = Replayer(path, gateway.handle, preview)

    async def seek(name: str, body: bytes) -> Answer:
        try:
            data = _body(body)
            time_ns = _time(data, "to", "time_ns")
        except ValueError as exc:
            return _error(400, str(exc))
        if time_ns is None:
            return _error(400, 'give the time as {"to": "-2h"} (or now, RFC 3339) or {"time_ns": N}')
        if name not in gateway.bus.subscriptions():
            return _error(404, f"no subscription {name!r}; have {sorted(gateway.bus.subscriptions())}")
        try:
            result = await gateway.bus.seek(name, time_ns)
        except SeekUnsupported as exc:
            return _error(409, str(exc))
        except ValueError as exc:
            return _error(400, str(exc))
        except BusClosed as exc:
            return _error(503, f"the bus is closed: {exc}")
        return 200, orjson.dumps(result.to_dict()), _JSON

    async def replay(body: bytes) -> Answer:
        if replayer is None:
            return _error(404, "this config has no deadletter_file sink: nothing to replay")
        try:
            data = _body(body)
            code = data.get("code")
            request = ReplayRequest(
                code=None if code is None else str(code),
                since_ns=_time(data, "since", "since_ns"),
                dry_run=bool(data.get("dry_run", False)),
                include_replayed=bool(data.get("include_replayed", False)),
            )
            summary = await replayer.replay(request)
        except ValueError as exc:
            return _error(400, str(exc))
        except BusClosed as exc:
            return _error(503, f"the bus is closed: {exc}")
        return 200, orjson.dumps(summary.to_dict()), _JSON

    async def hook(method: str, target: str, body: bytes) -> Answer | None:
        if target == "/deadletters/replay":
            return await replay(body) if method == "POST" else _error(405, "use POST")
        m = _SEEK.fullmatch(target)
        if m is None:
            return None
        if method != "POST":
            return _error(405, "use POST")
        return await seek(urllib.parse.unquote(m.group(1)), body)

    return hook
