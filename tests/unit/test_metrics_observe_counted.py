"""`observe_counted` leaves a histogram exactly as `observe` one by one would."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram

from gateway.core.metrics import LATENCY_BUCKETS, observe_counted


def samples(h: Histogram) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for m in h.collect() for s in m.samples if not s.name.endswith("_created")]


def test_observe_counted_once_each_equals_observe_one_by_one() -> None:
    rng = random.Random(7)
    amounts = [rng.choice([rng.uniform(0, 40), b, -1.0, 0.0, 1e9]) for b in LATENCY_BUCKETS for _ in range(20)]
    one, many = CollectorRegistry(), CollectorRegistry()
    a = Histogram("lat", "x", ["sink"], buckets=LATENCY_BUCKETS, registry=one).labels("s")
    b = Histogram("lat", "x", ["sink"], buckets=LATENCY_BUCKETS, registry=many).labels("s")
    for x in amounts:
        a.observe(x)
    observe_counted(b, [(x, 1) for x in amounts[:100]])
    observe_counted(b, [])
    observe_counted(b, [(x, 1) for x in amounts[100:]])
    got, want = samples(b), samples(a)
    assert [(n, lab) for n, lab, _ in got] == [(n, lab) for n, lab, _ in want]
    assert all(math.isclose(g, w, rel_tol=1e-9) for (_, _, g), (_, _, w) in zip(got, want, strict=True))
    assert samples(b)[-2][2] == len(amounts)  # _count


def test_observe_counted_equals_observe_n_times() -> None:
    counted = [(0.003, 50), (0.2, 1), (7.5, 3), (1e9, 2), (0.0, 4)]
    one, many = CollectorRegistry(), CollectorRegistry()
    a = Histogram("lat", "x", ["sink"], buckets=LATENCY_BUCKETS, registry=one).labels("s")
    b = Histogram("lat", "x", ["sink"], buckets=LATENCY_BUCKETS, registry=many).labels("s")
    for amount, n in counted:
        for _ in range(n):
            a.observe(amount)
    observe_counted(b, counted)
    observe_counted(b, [])
    got, want = samples(b), samples(a)
    assert [(n, lab) for n, lab, _ in got] == [(n, lab) for n, lab, _ in want]
    assert all(math.isclose(g, w, rel_tol=1e-9) for (_, _, g), (_, _, w) in zip(got, want, strict=True))
