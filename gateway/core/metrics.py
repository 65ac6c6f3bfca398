"""Every Prometheus metric the gateway exports, in one place.

All metrics live in one `CollectorRegistry` per `Metrics` instance (not the global
registry), so tests and several gateways in one process do not collide. Components receive
the `Metrics` object; they never create metrics themselves. Label values are names from
the operator's config or fixed reason codes, never payload content or secrets, so that
cardinality stays bounded.
"""

from __future__ import annotations

import bisect

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Fine between 50 ms and 1 s, where ingest-to-stored latency lives: a quantile is interpolated
# inside one bucket, so with only 0.1/0.25/0.5 bounds a p99 of 260 ms could read as up to
# 500 ms. A superset of the earlier bounds (queries on their `le` keep working); 0.25 is the
# latency target. ~2 ms per /metrics scrape either way.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "gateway_"
        # ingress
        self.messages_received = Counter(
            p + "messages_received", "MQTT messages received by the ingress.", ["ingress"], registry=r
        )
        self.messages_valid = Counter(p + "messages_valid", "Messages that decoded and validated.", registry=r)
        self.messages_invalid = Counter(
            p + "messages_invalid", "Messages dead-lettered by the ingress, by reason code.", ["reason"], registry=r
        )
        self.readings_valid = Counter(p + "readings_valid", "Readings published to the telemetry topic.", registry=r)
        self.broker_connected = Gauge(
            p + "broker_connected", "1 while the ingress is connected / listening.", registry=r
        )
        self.broker_reconnects = Counter(p + "broker_reconnects", "Reconnections to the external broker.", registry=r)
        self.ingress_read_pauses = Counter(
            p + "ingress_read_pauses",
            "Times the client ingress stopped reading its socket (local queue over its bound).",
            registry=r,
        )
        # bus
        self.bus_published = Counter(
            p + "bus_published", "Messages published per internal topic.", ["topic"], registry=r
        )
        self.bus_backlog = Gauge(
            p + "subscription_backlog",
            "Messages held by a subscription (waiting or leased).",
            ["subscription"],
            registry=r,
        )
        self.bus_backlog_bytes = Gauge(
            p + "subscription_backlog_bytes", "Bytes held by a subscription.", ["subscription"], registry=r
        )
        self.bus_oldest_unacked = Gauge(
            p + "subscription_oldest_unacked_age_seconds",
            "Age of the oldest unacked message.",
            ["subscription"],
            registry=r,
        )
        self.bus_dead_lettered = Gauge(
            p + "subscription_dead_lettered",
            "Messages dead-lettered after max attempts (total).",
            ["subscription"],
            registry=r,
        )
        self.bus_expired = Gauge(
            p + "subscription_expired", "Leases that passed their ack deadline (total).", ["subscription"], registry=r
        )
        self.publish_blocked_seconds = Counter(
            p + "publish_blocked_seconds",
            "Time publishers waited on a full subscription (backpressure).",
            ["topic"],
            registry=r,
        )
        # the durable bus's database (bus.type: sqlite)
        self.bus_dropped_oldest = Counter(
            p + "bus_dropped_oldest",
            "Unacked messages dropped by bus.sqlite.full_policy: drop_oldest (since start).",
            registry=r,
        )
        self.bus_stored_bytes = Gauge(
            p + "bus_stored_bytes", "Bytes of messages stored in the bus database (acked ones kept too).", registry=r
        )
        self.bus_stored_messages = Gauge(
            p + "bus_stored_messages", "Messages stored in the bus database (acked ones kept too).", registry=r
        )
        self.bus_unacked_bytes = Gauge(
            p + "bus_unacked_bytes", "Stored bytes some subscription still holds (bounded by max_bytes).", registry=r
        )
        # sinks
        self.sink_written = Counter(p + "sink_written", "Items a sink accepted.", ["sink"], registry=r)
        self.sink_failed = Counter(
            p + "sink_failed", "Items a sink rejected permanently (dead-lettered).", ["sink"], registry=r
        )
        self.sink_retried = Counter(
            p + "sink_retried", "Items retried after a transient failure.", ["sink"], registry=r
        )
        self.sink_batch_size = Histogram(
            p + "sink_batch_size", "Items per write.", ["sink"], buckets=BATCH_BUCKETS, registry=r
        )
        self.sink_write_seconds = Histogram(
            p + "sink_write_seconds", "Duration of one write call.", ["sink"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.sink_healthy = Gauge(p + "sink_healthy", "1 while the sink's last write succeeded.", ["sink"], registry=r)
        self.ingest_to_stored_seconds = Histogram(
            p + "ingest_to_stored_seconds",
            "From receipt by the gateway to the sink's acknowledgement of the write.",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # security (labels are fixed codes, never usernames, topics or secrets)
        self.auth_failures = Counter(
            p + "auth_failures", "Connections refused by the embedded broker, by reason.", ["reason"], registry=r
        )
        self.broker_protocol_errors = Counter(
            p + "broker_protocol_errors",
            "Device connections the embedded broker closed for a protocol error, by reason (malformed, too_large).",
            ["reason"],
            registry=r,
        )
        self.acl_denied = Counter(
            p + "acl_denied", "Publishes/subscriptions refused by the ACL, by action.", ["action"], registry=r
        )
        self.rate_limited = Counter(p + "rate_limited", "Messages dead-lettered by a device's rate limit.", registry=r)
        self.admin_unauthorized = Counter(
            p + "admin_unauthorized", "Admin requests refused for a missing or wrong bearer token.", registry=r
        )
        # processors and forwarders (labels: rule and sink names from the config, fixed codes)
        self.alert_evaluations = Counter(
            p + "alert_evaluations", "Readings (or absence checks) evaluated by an alert rule.", ["rule"], registry=r
        )
        self.alerts_fired = Counter(p + "alerts_fired", "Alerts that started firing.", ["rule"], registry=r)
        self.alerts_resolved = Counter(p + "alerts_resolved", "Alerts resolved.", ["rule"], registry=r)
        self.alerts_firing = Gauge(p + "alerts_firing", "Alerts firing now.", ["rule"], registry=r)
        self.alert_latency = Histogram(
            p + "alert_latency_seconds",
            "From receipt of the reading that fired or resolved an alert to the engine's event.",
            ["rule"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.invalidation_changes = Counter(
            p + "invalidation_changes",
            "Device changes seen, by source (meta, admin, telemetry).",
            ["source"],
            registry=r,
        )
        self.invalidations_emitted = Counter(
            p + "invalidations_emitted", "Invalidation events published (after coalescing).", registry=r
        )
        self.config_reloads = Counter(
            p + "config_reloads",
            "Config reloads (SIGHUP or file change), by result (ok, rejected).",
            ["result"],
            registry=r,
        )


def observe_ages(histogram: Histogram, now_ns: int, stamps: list[int]) -> None:
    """`histogram.observe((now_ns - s) / 1e9)` for every epoch-ns stamp in `stamps`, in any
    order, with one sort, one binary search per bucket and one counter update per bucket hit
    instead of a locked `observe` per stamp (the sink runner observes every reading it writes).

    Bucket counts are exactly those of `observe` one by one (the ages are computed by the same
    expression); the sum is computed exactly in integers and rounded once. prometheus_client
    has no bulk observe, so this uses its `_upper_bounds`, `_buckets` and `_sum`;
    `tests/unit/test_metrics_observe_ages.py` checks the result against `observe`, so a change
    of those internals fails there, not in production.
    """
    if not stamps:
        return
    ordered = sorted(stamps, reverse=True)  # newest first: ages ascending

    def age(stamp: int) -> float:
        return (now_ns - stamp) / 1e9

    below, n = 0, len(ordered)
    for i, bound in enumerate(histogram._upper_bounds):
        upto = bisect.bisect_right(ordered, bound, lo=below, key=age)
        if upto > below:
            histogram._buckets[i].inc(upto - below)
            below = upto
            if below == n:
                break
    histogram._sum.inc((now_ns * n - sum(stamps)) / 1e9)
