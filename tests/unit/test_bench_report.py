"""The bench's ratio targets against the aiomqtt counter: judged on the median of the repeated pairs."""

from __future__ import annotations

from bench.procs import RunResult
from bench.report import pairs, targets

TARGET = "QoS 0 single readings ≥ 2.0x aiomqtt_count"


def run(system: str, msgs_per_s: float, ok: bool = True) -> RunResult:
    return RunResult(system, "q0_single", 1000, 1000, 1000, None, 1000 / msgs_per_s, ok=ok, note="" if ok else "boom")


def verdict(results: list[RunResult]) -> tuple[str, bool | None]:
    target = next(t for t in targets(results, "none", ("none", "none")) if t.name == TARGET)
    return target.measured, target.met


def test_without_pairs_the_first_pass_decides() -> None:
    first = [run("aiomqtt_count", 100), run("gateway", 150), run("gateway_w2", 210)]
    assert verdict(first) == ("2.10x (210 vs 100 msg/s)", True)


def test_the_median_of_the_pairs_decides_not_the_first_pass() -> None:
    first = [run("aiomqtt_count", 100), run("gateway", 150), run("gateway_w2", 210)]
    repeated = [
        run("aiomqtt_count_p1", 100),
        run("gateway_w2_p1", 190),
        run("aiomqtt_count_p2", 110),
        run("gateway_w2_p2", 231),
        run("aiomqtt_count_p3", 100),
        run("gateway_w2_p3", 197),
    ]
    assert [(c.system, g.system) for c, g in pairs([*first, *repeated], "q0_single")] == [
        ("aiomqtt_count_p1", "gateway_w2_p1"),
        ("aiomqtt_count_p2", "gateway_w2_p2"),
        ("aiomqtt_count_p3", "gateway_w2_p3"),
    ]
    measured, met = verdict([*first, *repeated])
    assert met is False  # first pass 2.10x, but the pairs' median is 1.97x
    assert measured == "1.97x, median of 3 pairs (1.90x, 2.10x, 1.97x); first pass 2.10x (210 vs 100 msg/s)"
    better = [*first, *repeated[:4], run("aiomqtt_count_p3", 100), run("gateway_w2_p3", 205)]
    assert verdict(better)[1] is True


def test_a_failed_pair_fails_the_target() -> None:
    first = [run("aiomqtt_count", 100), run("gateway", 250)]
    measured, met = verdict([*first, run("aiomqtt_count_p1", 100), run("gateway_p1", 250, ok=False)])
    assert (measured, met) == ("a repeated pair failed", False)
