"""`observe_many` leaves a histogram exactly as `observe` one by one would."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram

from gateway.core.metrics import LATENCY_BUCKETS, observe_many


def samples(h: Histogram) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for m in h.collect() for s in m.samples if not s.name.endswith("_created")]


def test_observe_many_equals_observe_one_by_one() -> None:
    rng = random.Random(7)
    amounts = [rng.choice([rng.uniform(0, 40), b, -1.0, 0.0, 1e9]) for b in LATENCY_BUCKETS for _ in range(20)]
    one, many = CollectorRegistry(), CollectorRegistry()
    a = Histogram("lat", "x", ["sink"], buckets=LATENCY_BUCKETS, registry=one).labels("s")
    b = Histogram("lat", "x", ["sink"], buckets=LATENCY_BUCKETS, registry=many).labels("s")
    for x in amounts:
        a.observe(x)
    observe_many(b, amounts[:100])
    observe_many(b, [])
    observe_many(b, amounts[100:])
    got, want = samples(b), samples(a)
    assert [(n, lab) for n, lab, _ in got] == [(n, lab) for n, lab, _ in want]
    assert all(math.isclose(g, w, rel_tol=1e-9) for (_, _, g), (_, _, w) in zip(got, want, strict=True))
    assert samples(b)[-2][2] == len(amounts)  # _count
