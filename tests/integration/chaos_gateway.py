"""Gateway-side helpers of the chaos tests: configs, kill -9, waiting, counting points in the store."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import yaml

from tests.gateway_proc import GatewayProcess, write_config
from tests.integration.chaos_helpers import Message, ResilientPublisher
from tests.servers import VictoriaMetrics

DL_SUB = {"deadletters": {"topic": "deadletter", "dead_letter_topic": None}}
DL_SINK = {"deadletters": {"type": "deadletter_file", "subscription": "deadletters"}}
FAST_RETRY = {"retry_min_backoff": "100ms", "retry_max_backoff": "1s"}


def chaos_config(
    tmp_path: Path, ingress: dict[str, Any], sink: dict[str, Any], bus: dict[str, Any] | None = None
) -> Path:
    """A gateway config with one telemetry sink `tsdb` (and the dead-letter file); `bus` goes under `bus.sqlite`."""
    sub = {"topic": "telemetry", "batch": {"max_latency": "50ms", "max_messages": 500}}
    path = write_config(
        tmp_path, ingress, {"tsdb": {"subscription": "tsdb", **sink}, **DL_SINK}, {"tsdb": sub, **DL_SUB}
    )
    if bus:
        data = yaml.safe_load(path.read_text())
        data["bus"]["sqlite"] = bus
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def influx(url: str, **runner: Any) -> dict[str, Any]:
    return {"type": "influxdb", "url": url, "timeout": "2s", "runner": {**FAST_RETRY, **runner}}


def kill9(gw: GatewayProcess) -> None:
    assert gw.proc is not None and gw.proc.poll() is None, "the gateway died on its own: " + gw.logs()[-2000:]
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)


def metric_or_none(gw: GatewayProcess, name: str, labels: str = "") -> float | None:
    """`gw.metric`, or None while the admin endpoint is not up yet."""
    try:
        return gw.metric(name, labels)
    except OSError:
        return None


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def vm_points(victoria: VictoriaMetrics, match: str) -> tuple[int, set[tuple[str, int]], list[float]]:
    """(samples, distinct (series, timestamp) identities, values) of the series matching `match`."""
    samples = 0
    identities: set[tuple[str, int]] = set()
    values: list[float] = []
    for series in victoria.export(match):
        labels = str(sorted(series["metric"].items()))  # type: ignore[attr-defined]
        stamps: list[int] = series["timestamps"]  # type: ignore[assignment]
        samples += len(stamps)
        identities.update((labels, t) for t in stamps)
        values += series["values"]  # type: ignore[arg-type]
    return samples, identities, values


def assert_all_in_victoria(victoria: VictoriaMetrics, n: int, timeout: float = 60) -> None:
    count = victoria.wait_for_count('environment_counter{site="chaos"}', n, timeout=timeout)
    samples, identities, values = vm_points(victoria, 'environment_counter{site="chaos"}')
    missing = sorted(set(range(n)) - {int(v) for v in values})
    assert not missing, f"{len(missing)} of {n} messages missing from the store (count {count}): {missing[:20]}"
    assert samples == len(identities) == n, f"{samples} samples, {len(identities)} identities, {n} messages"


def start_publisher(port: int, messages: list[Message], rate: float, timeout: float = 120) -> ResilientPublisher:
    publisher = ResilientPublisher(port, messages, rate, timeout=timeout)
    publisher.start()
    return publisher


def finish(publisher: ResilientPublisher, timeout: float) -> None:
    publisher.join(timeout)
    assert publisher.error is None, repr(publisher.error)
    assert publisher.done, f"only {len(publisher.acked)} of {len(publisher.messages)} messages were acknowledged"
