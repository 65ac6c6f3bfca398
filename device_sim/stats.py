"""Counting what a run did, and the final summary.

Contract of the counters (`Stats`): every publish the simulator attempts counts once in
`sent`, and by the end of a run each one has ended exactly once as `acknowledged` (QoS 1:
its PUBACK arrived; QoS 0: it was handed to the connection's socket) or `failed` (refused,
connection lost, or still unacknowledged when the drain timeout ran out), so after a run
`sent == acknowledged + failed`. Bad messages count in `sent` like any other and also in
`bad_by_kind`.

Latencies (publish to PUBACK, QoS 1 only) go into a log-scale histogram with 1 % wide
buckets from 1 µs to 100 s, so the p50/p99 reported are within about 1 % of the truth and
histograms from several processes merge exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

_MIN_S = 1e-6
_STEP = math.log(1.01)
_BUCKETS = math.ceil(math.log(100.0 / _MIN_S) / _STEP) + 1


class LatencyHistogram:
    """Counts of latencies in 1 %-wide log buckets; bounded size, mergeable."""

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.total = 0

    def record(self, seconds: float) -> None:
        bucket = 0 if seconds <= _MIN_S else min(int(math.log(seconds / _MIN_S) / _STEP), _BUCKETS - 1)
        self.counts[bucket] += 1
        self.total += 1

    def merge(self, other: LatencyHistogram) -> None:
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.total += other.total

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 < q <= 1) in seconds (bucket midpoint), None when empty."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return _MIN_S * math.exp((i + 0.5) * _STEP)
        return _MIN_S * math.exp((_BUCKETS - 0.5) * _STEP)

    def to_sparse(self) -> dict[int, int]:
        return {i: n for i, n in enumerate(self.counts) if n}

    @classmethod
    def from_sparse(cls, sparse: dict[int, int]) -> LatencyHistogram:
        hist = cls()
        for i, n in sparse.items():
            hist.counts[i] += n
            hist.total += n
        return hist


@dataclass(slots=True)
class Stats:
    """Live counters of one process; see the module docstring for their contract."""

    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    readings: int = 0
    reconnects: int = 0
    bad_by_kind: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def count_bad(self, kind: str) -> None:
        self.bad_by_kind[kind] = self.bad_by_kind.get(kind, 0) + 1

    def merge(self, other: Stats) -> None:
        self.sent += other.sent
        self.acknowledged += other.acknowledged
        self.failed += other.failed
        self.readings += other.readings
        self.reconnects += other.reconnects
        for kind, n in other.bad_by_kind.items():
            self.bad_by_kind[kind] = self.bad_by_kind.get(kind, 0) + n
        self.latency.merge(other.latency)

    def to_wire(self) -> dict[str, Any]:
        """A picklable, JSON-ready form (for sending between processes)."""
        return {
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "readings": self.readings,
            "reconnects": self.reconnects,
            "bad_by_kind": dict(self.bad_by_kind),
            "latency": {str(bucket): n for bucket, n in self.latency.to_sparse().items()},
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Stats:
        return cls(
            sent=data["sent"],
            acknowledged=data["acknowledged"],
            failed=data["failed"],
            readings=data["readings"],
            reconnects=data["reconnects"],
            bad_by_kind=dict(data["bad_by_kind"]),
            latency=LatencyHistogram.from_sparse({int(k): v for k, v in data["latency"].items()}),
        )


@dataclass(slots=True)
class Summary:
    """What a run did, as printed and as written by `--summary-json`.

    `duration_s` is the publishing phase (from the first due message until sending stopped,
    not counting connecting or waiting for the last acknowledgements); `started_ns` is the
    wall clock (epoch ns) at which that phase began; `achieved_rate` is `sent / duration_s`.
    Latencies are None for QoS 0 or when nothing was acknowledged.
    """

    sent: int
    acknowledged: int
    failed: int
    duration_s: float
    started_ns: int
    achieved_rate: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    bad_by_kind: dict[str, int]
    readings: int
    reconnects: int
    mode: str
    qos: int
    devices: int
    connections: int
    processes: int
    interrupted: bool

    @classmethod
    def build(
        cls,
        stats: Stats,
        duration_s: float,
        *,
        started_ns: int,
        qos: int,
        mode: str,
        devices: int,
        connections: int,
        processes: int,
        interrupted: bool,
    ) -> Summary:
        p50 = stats.latency.quantile(0.50) if qos == 1 else None
        p99 = stats.latency.quantile(0.99) if qos == 1 else None
        return cls(
            sent=stats.sent,
            acknowledged=stats.acknowledged,
            failed=stats.failed,
            duration_s=round(duration_s, 3),
            started_ns=started_ns,
            achieved_rate=round(stats.sent / duration_s, 1) if duration_s > 0 else 0.0,
            latency_p50_ms=None if p50 is None else round(p50 * 1e3, 3),
            latency_p99_ms=None if p99 is None else round(p99 * 1e3, 3),
            bad_by_kind=dict(sorted(stats.bad_by_kind.items())),
            readings=stats.readings,
            reconnects=stats.reconnects,
            mode=mode,
            qos=qos,
            devices=devices,
            connections=connections,
            processes=processes,
            interrupted=interrupted,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
