"""The alerts/invalidation part of the `gateway check-config` summary, and forwarder targets.

`processors_summary` lists the alert engine (its subscription, state file, every rule in one
line) and the change detector; `forwarder_target` says where a forwarder sink delivers
(webhook URL, MQTT broker and topic, Redis URL with its channel and keys, logger) and its
retry policy. Secrets are never printed: not the webhook's HMAC secret, nor MQTT or Redis
passwords (only whether one is set), nor credentials or a query string inside a URL.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.processors.build import state_path
from gateway.processors.rules import AbsenceRule, RateRule, Selector
from gateway.sinks.log import LogSinkConfig
from gateway.sinks.mqtt_publish import MQTTPublishSinkConfig
from gateway.sinks.redis import RedisSinkConfig
from gateway.sinks.webhook import WebhookSinkConfig


def duration(d: timedelta) -> str:
    ms = round(d.total_seconds() * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def safe_url(url: str) -> str:
    """`url` without user, password and query (they may hold credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def forwarder_target(sink: Any) -> str | None:
    """Where this forwarder delivers, and its retries; None if `sink` is not a forwarder."""
    if isinstance(sink, WebhookSinkConfig):
        signed = f"signed (HMAC-SHA256 in {sink.signature_header})" if sink.secret else "unsigned"
        target = f"POST {safe_url(sink.url)}, {signed}, timeout {duration(sink.timeout)}"
    elif isinstance(sink, MQTTPublishSinkConfig):
        topic = sink.topic or "alerts/{rule}/{device_id} | cache/invalidate/{object_type}/{id}"
        auth = f", user {sink.username!r}" if sink.username else ""
        retain = ", retained" if sink.retain else ""
        target = f"mqtt://{sink.host}:{sink.port} topic {topic}, QoS {sink.qos}{retain}{auth}"
    elif isinstance(sink, RedisSinkConfig):
        actions = [f"PUBLISH {sink.channel}"] if sink.channel else []
        actions += [f"DEL {k}" for k in sink.delete_keys]
        auth = ", with password" if sink.password or urlsplit(sink.url).password else ""
        target = f"{safe_url(sink.url)}: {', '.join(actions)}{auth}"
    elif isinstance(sink, LogSinkConfig):
        target = f"logger {sink.logger} at {sink.level}"
    else:
        return None
    retries = sink.runner.max_retries
    then = "retried forever" if retries is None else f"{retries} retries, then dead-lettered"
    return f"{target}; {then}"


def _selector(s: Selector) -> str:
    parts = [f"device_id {','.join(s.device_id)}"] if s.device_id else []
    parts += [f"measurement {','.join(s.measurement)}"] if s.measurement else []
    parts += [f"{tag} {','.join(patterns)}" for tag, patterns in s.tags.items()]
    return f", select {'; '.join(parts)}" if parts else ""


def rule_line(rule: Any) -> str:
    if isinstance(rule, AbsenceRule):
        what = f"absence: silent for {duration(rule.after)}"
    else:
        if rule.op == "between":
            clear = "" if rule.clear_low is None and rule.clear_high is None else " (clear outside the wider band)"
        else:
            clear = "" if rule.clear is None else f" (clear {rule.clear:g})"
        per = f"/s over {duration(rule.window)}" if isinstance(rule, RateRule) else ""
        hold = f" for {duration(rule.for_)}" if rule.for_ else ""
        what = f"{rule.type}: {rule.field}{per} {rule.threshold_text()}{clear}{hold}"
    return f"  {rule.name:<14} {what}, {rule.severity}{_selector(rule.select)}"


def processors_summary(settings: Any) -> list[str]:
    out: list[str] = []
    alerts = settings.alerts
    if alerts is None:
        out.append("alerts     none")
    else:
        out.append(
            f"alerts     <- {alerts.subscription}, {len(alerts.rules)} rules; state {state_path(settings)} "
            f"(last-seen saved every {duration(alerts.state_interval)}), absence checked every "
            f"{duration(alerts.check_interval)}"
        )
        out += [rule_line(rule) for rule in alerts.rules.values()]
    inv = settings.invalidation
    if inv is None:
        out.append("invalidation none")
        return out
    sources = [f"meta topics {', '.join(inv.meta_topics)}"] if inv.meta_topics else []
    sources += [f"state fields {', '.join(inv.state_fields)} <- {inv.subscription}"] if inv.state_fields else []
    if settings.admin.enabled:
        sources.append("admin endpoint PUT /devices/{id}/meta")
    p = Path(inv.state_file).expanduser()
    after = f", telemetry changes wait for sink {inv.after_sink!r}" if inv.after_sink else ""
    out.append(f"invalidation {inv.object_type} changes coalesced over {duration(inv.window)}{after}")
    out.append(f"  sources  {'; '.join(sources)}")
    out.append(f"  state    {p if p.is_absolute() else Path(settings.data_dir) / p}")
    return out
