"""`observe_ages` leaves a histogram exactly as `observe` one by one would."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram

from gateway.core.metrics import LATENCY_BUCKETS, observe_ages

NOW = 1_800_000_000_123_456_789


def histogram() -> Histogram:
    return Histogram("lat", "x", ["sink"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry()).labels("s")


def samples(h: Histogram) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for m in h.collect() for s in m.samples if not s.name.endswith("_created")]


def assert_as_one_by_one(batches: list[list[int]]) -> None:
    one, many = histogram(), histogram()
    for stamps in batches:
        for s in stamps:
            one.observe((NOW - s) / 1e9)
        observe_ages(many, NOW, stamps)
    got, want = samples(many), samples(one)
    assert [(n, lab) for n, lab, _ in got] == [(n, lab) for n, lab, _ in want]
    buckets = [(lab, v) for n, lab, v in got if n.endswith("_bucket")]
    assert buckets == [(lab, v) for n, lab, v in want if n.endswith("_bucket")]  # counts exactly
    assert all(math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9) for (_, _, g), (_, _, w) in zip(got, want, strict=True))


def test_ages_at_and_around_every_bound_land_as_observe_puts_them() -> None:
    stamps = []
    for bound in LATENCY_BUCKETS:
        edge = NOW - round(bound * 1e9)
        stamps += [edge - 1, edge, edge + 1, edge - 1_000, edge + 1_000]
    stamps += [NOW, NOW + 5, NOW + 10**12, NOW - 10**12, 0]  # no age, in the future, very old
    random.Random(3).shuffle(stamps)
    assert_as_one_by_one([stamps, stamps[:7], []])


def test_random_batches_in_any_order_with_repeats() -> None:
    rng = random.Random(11)
    batches = []
    for _ in range(30):
        base = NOW - rng.randrange(0, 40 * 10**9)
        stamps = [base + rng.randrange(-(10**9), 10**9) for _ in range(rng.randrange(1, 400))]
        stamps += stamps[: rng.randrange(0, 20)]  # readings of one publish share a stamp
        if rng.random() < 0.5:
            stamps.sort()
        batches.append(stamps)
    assert_as_one_by_one(batches)


def test_nothing_observed_for_no_stamps() -> None:
    h = histogram()
    observe_ages(h, NOW, [])
    assert samples(h) == samples(histogram())
