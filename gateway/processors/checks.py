"""Cross-checks of the `alerts` and `invalidation` sections and of the forwarder sinks against
the rest of the config (called by `gateway.settings`): problems as (key path, message)."""

from __future__ import annotations

from typing import Any

from gateway.processors.events import ALERT_TEMPLATE_VARS, INVALIDATION_TEMPLATE_VARS, check_template

ALERTS_TOPIC = "alerts"
INVALIDATIONS_TOPIC = "invalidations"
FORWARDER_TYPES = frozenset({"log", "webhook", "mqtt_publish", "redis"})

Problem = tuple[tuple[str, ...], str]


def processor_subscriptions(s: Any) -> dict[str, tuple[str, ...]]:
    """Subscription name -> the config key that consumes it, for each processor."""
    out: dict[str, tuple[str, ...]] = {}
    if s.alerts is not None:
        out[s.alerts.subscription] = ("alerts", "subscription")
    if s.invalidation is not None and s.invalidation.subscription is not None:
        out[s.invalidation.subscription] = ("invalidation", "subscription")
    return out


def processor_problems(s: Any, telemetry_topic: str) -> list[Problem]:
    problems: list[Problem] = []
    subs = s.bus.subscriptions
    seen: dict[str, tuple[str, ...]] = {}
    for name, key in processor_subscriptions(s).items():
        sub = subs.get(name)
        if sub is None:
            problems.append((key, f"no subscription named {name!r}; defined: {sorted(subs)}"))
        elif sub.topic != telemetry_topic:
            problems.append((key, f"subscription {name!r} is on topic {sub.topic!r}, not {telemetry_topic!r}"))
        if name in seen or any(sink.subscription == name for sink in s.sinks.values()):
            problems.append((key, f"subscription {name!r} is already consumed by another sink or processor"))
        seen[name] = key
    inv = s.invalidation
    if inv is not None and inv.after_sink is not None:
        sink = s.sinks.get(inv.after_sink)
        sub = subs.get(sink.subscription) if sink is not None else None
        if sink is None or sub is None or sub.topic != telemetry_topic:
            problems.append(
                (("invalidation", "after_sink"), f"{inv.after_sink!r} is not a sink of the {telemetry_topic!r} topic")
            )
    for name, sink in s.sinks.items():
        sub = subs.get(sink.subscription)
        if sub is None:
            continue
        forwarder = sink.type in FORWARDER_TYPES
        on_events = sub.topic in (ALERTS_TOPIC, INVALIDATIONS_TOPIC)
        if forwarder and not on_events:
            problems.append(
                (("sinks", name, "subscription"), f"a {sink.type} forwarder reads the alerts or invalidations topic, "
                 f"not {sub.topic!r}")
            )  # fmt: skip
        if on_events and not forwarder:
            problems.append(
                (("sinks", name, "subscription"), f"a {sink.type} sink cannot take {sub.topic!r} events; "
                 f"use one of {sorted(FORWARDER_TYPES)}")
            )  # fmt: skip
        if sink.type == "redis" and sub.topic != INVALIDATIONS_TOPIC:
            problems.append((("sinks", name, "subscription"), "the redis forwarder takes the invalidations topic"))
        if sink.type == "mqtt_publish" and sink.topic is not None and on_events:
            allowed = ALERT_TEMPLATE_VARS if sub.topic == ALERTS_TOPIC else INVALIDATION_TEMPLATE_VARS
            try:
                check_template(sink.topic, allowed)
            except ValueError as exc:
                problems.append((("sinks", name, "topic"), str(exc)))
    return problems
