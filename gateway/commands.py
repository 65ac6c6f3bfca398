"""The offline commands: the `check-config` summary, `query` and `deadletter list`.

They read the same config as `gateway run` to find the files (store, dead letters), and
open them read-only: they are safe to use while the gateway runs.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.core.duration import format_duration
from gateway.ingress.config import ClientIngressConfig, EmbeddedIngressConfig
from gateway.processors.summary import forwarder_target, processors_summary
from gateway.settings import GatewaySettings
from gateway.sinks.deadletter_file import DeadLetterFileConfig, read_dead_letters
from gateway.sinks.influxdb import InfluxDBSinkConfig
from gateway.sinks.sqlite_store import SQLiteStoreConfig, query_readings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def summary(settings: GatewaySettings, path: Path) -> str:
    """One screen: what the gateway would run with this config."""
    out = [f"{path}: OK"]
    ing = settings.ingress
    if isinstance(ing, EmbeddedIngressConfig):
        out.append(f"ingress    embedded MQTT broker (amqtt) on {ing.host}:{ing.port}")
        auth = f"password file {ing.auth.password_file}" if ing.auth.password_file else "no password file"
        anonymous = "anonymous allowed" if ing.allow_anonymous else "anonymous refused"
        tls = "TLS" + (" + client certificates" if ing.tls.ca_file else "") if ing.tls.enabled else "no TLS"
        out.append(f"  auth     {auth}, {anonymous}, {tls}; devices publish to {', '.join(ing.acl.publish)}")
    elif isinstance(ing, ClientIngressConfig):
        group = f", shared group {ing.shared_group!r}" if ing.shared_group else ""
        out.append(f"ingress    client of mqtt://{ing.host}:{ing.port} as {ing.client_id!r}, QoS {ing.qos}{group}")
    out.append(f"data dir   {settings.data_dir}")
    sec = settings.security
    limit = (
        f"{sec.rate_limit.messages_per_second:g} msg/s per device (burst {sec.rate_limit.burst})"
        if sec.rate_limit
        else "no rate limit"
    )
    payload = settings.validation.max_payload_bytes
    out.append(f"limits     topic depth {sec.max_topic_levels}, {limit}, payload {payload} bytes")
    out.append("routes")
    for r in settings.routes:
        out.append(f"  {r.pattern:<40} -> schema {r.schema_name}")
    out.append("schemas")
    for name, s in settings.schemas.items():
        fields = ", ".join(
            f"{k}:{f.type}{'(tag)' if f.tag else ''}{'*' if f.required else ''}" for k, f in s.fields.items()
        )
        out.append(f"  {name} (measurement {s.measurement}): {fields}")
    bus = settings.bus
    if bus.type == "sqlite":
        db, sq = bus.sqlite.path or "bus.db", bus.sqlite
        out.append(
            f"bus        sqlite (durable) {settings.data_dir / db}, synchronous {sq.synchronous}, "
            f"retention {format_duration(sq.retention)}, max {sq.max_bytes} bytes, when full: {sq.full_policy}"
        )
    else:
        out.append("bus        memory (not durable: what it holds is lost when the process ends)")
    out.append("topics and subscriptions")
    for name, sub in settings.bus.subscriptions.items():
        dl = sub.dead_letter_topic or "none"
        out.append(
            f"  {sub.topic:<11} -> {name:<14} max attempts {sub.max_delivery_attempts}, dead letters -> {dl}, "
            f"batch {sub.batch.max_messages}/{sub.batch.max_latency.total_seconds() * 1000:g} ms"
        )
    out.append("sinks")
    for name, sink in settings.sinks.items():
        out.append(f"  {name:<14} {sink.type:<16} <- {sink.subscription}  {_sink_target(sink, settings)}")
    out += processors_summary(settings)
    adm = settings.admin
    endpoint = f"http://{adm.host}:{adm.port} (/healthz /readyz /metrics)" if adm.enabled else "disabled"
    out.append(f"admin      {endpoint}")
    return "\n".join(out)


def _sink_target(sink: Any, settings: GatewaySettings) -> str:
    if isinstance(sink, InfluxDBSinkConfig):
        return f"{sink.url} bucket {sink.bucket!r}"
    if isinstance(sink, SQLiteStoreConfig | DeadLetterFileConfig):
        return str(_sink_path(sink, settings))
    return forwarder_target(sink) or ""


def _sink_path(sink: SQLiteStoreConfig | DeadLetterFileConfig, settings: GatewaySettings) -> Path:
    default = "readings.db" if isinstance(sink, SQLiteStoreConfig) else "deadletter.jsonl"
    p = Path(sink.path or default)
    return p if p.is_absolute() else settings.data_dir / p


def parse_time(text: str, now: float | None = None) -> int:
    """RFC 3339, epoch seconds, or a duration back from now → epoch nanoseconds."""
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip())
    if m:
        return int((now - float(m.group(1)) * _UNIT_S[m.group(2)]) * 1e9)
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use RFC 3339, epoch seconds, or a duration like 15m)") from None
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone; add Z or +00:00")
    return int(dt.timestamp() * 1e9)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="milliseconds")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def query(settings: GatewaySettings, args: argparse.Namespace) -> int:
    stores = {n: s for n, s in settings.sinks.items() if isinstance(s, SQLiteStoreConfig)}
    if not stores:
        print("gateway query: this config has no sqlite sink (query your time-series store instead)", file=sys.stderr)
        return 2
    name = args.sink or next(iter(stores))
    if name not in stores:
        print(f"gateway query: no sqlite sink named {name!r}; have {sorted(stores)}", file=sys.stderr)
        return 2
    db = _sink_path(stores[name], settings)
    if not db.exists():
        print(f"gateway query: no store yet at {db} (has the gateway run and received readings?)", file=sys.stderr)
        return 1
    try:
        start = parse_time(args.since)
        end = parse_time(args.until) if args.until else None
    except ValueError as exc:
        print(f"gateway query: {exc}", file=sys.stderr)
        return 2
    rows = query_readings(
        db,
        device_id=args.device,
        field=args.field,
        start_ns=start,
        end_ns=end,
        limit=args.limit,
        measurement=args.measurement,
    )
    if args.format == "json":
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_APPEND_NEWLINE).decode())
        return 0
    for r in rows:
        r["time"] = _iso(int(r["time_ns"]))
    print(_table(rows, ["time", "measurement", "device_id", "field", "value"]))
    print(f"({len(rows)} rows)")
    return 0


def deadletter_list(settings: GatewaySettings, args: argparse.Namespace) -> int:
    files = [s for s in settings.sinks.values() if isinstance(s, DeadLetterFileConfig)]
    if not files:
        print("gateway deadletter list: this config has no deadletter_file sink", file=sys.stderr)
        return 2
    path = _sink_path(files[0], settings)
    records = read_dead_letters(path, reason_contains=args.reason) if path.exists() else []
    records = records[-args.limit :] if args.limit else records
    if args.format == "json":
        sys.stdout.write(orjson.dumps(records, option=orjson.OPT_APPEND_NEWLINE).decode())
        return 0
    rows = [{**r, "payload": str(r.get("payload", ""))[:60]} for r in records]
    print(_table(rows, ["received_at", "topic", "source", "code", "reason", "payload"]))
    print(f"({len(records)} dead letters in {path})")
    return 0
