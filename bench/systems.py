"""One benchmark run = one system consuming one workload from the simulator. Each function
here starts its consumer, runs `device-sim`, waits for the end, verifies the count, and
returns a `RunResult`.

Timing: receive-only consumers (mosquitto_sub, the aiomqtt counter) are timed from the first
to the last message they received; the gateway and the bridge from the simulator's first
publish (its summary's `started_ns`) to the moment every reading was acknowledged by the store
(the gateway's `gateway_sink_written_total`, polled every 0.1 s; the bridge's success callbacks). `stored`
is then counted in the store itself (VictoriaMetrics export or SQLite rows), never assumed.
A run that does not reach its count within its time limit is returned with `ok=False`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import orjson

from bench.procs import (
    Env,
    RunResult,
    Sim,
    device_prefix,
    run_timeout,
    start_process,
    vm_match,
    wait_ready,
    wait_rusage,
    workdir_for,
)
from bench.workloads import TOPIC_FILTER, Workload
from tests.servers import free_port


def run_mosquitto_sub(env: Env, w: Workload) -> RunResult:
    """Broker ceiling: `mosquitto_sub -C N -F %U` (one timestamp line per message) into a file."""
    wd = workdir_for(env, "mosquitto_sub", w)
    out = wd / "received.txt"
    cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(env.mosquitto.port), "-t", TOPIC_FILTER]
    cmd += ["-q", str(w.qos), "-C", str(w.count), "-F", "%U", "-i", f"bench-sub-{time.time_ns()}"]
    with out.open("w") as sink:
        proc = start_process(cmd, wd / "sub.log", sink)
        time.sleep(1.0)  # mosquitto_sub says nothing on SUBACK; a late subscription fails the exact count below
        sim = Sim(w, env.mosquitto.port, device_prefix("mosquitto_sub", w), wd)
        code, cpu, rss = wait_rusage(proc, run_timeout(w))
        sim_rate = sim.finish(30)
    lines = out.read_text().split()
    seconds = float(lines[-1]) - float(lines[0]) if len(lines) > 1 else 0.0
    ok = code == 0 and len(lines) == w.count
    return RunResult(
        "mosquitto_sub",
        w.name,
        w.count,
        w.readings,
        len(lines),
        None,
        seconds,
        cpu,
        rss,
        None,
        None,
        sim_rate,
        ok,
        "" if ok else f"received {len(lines)} of {w.count}",
    )


def run_aiomqtt_count(env: Env, w: Workload, port: int | None = None, system: str = "aiomqtt_count") -> RunResult:
    """aiomqtt receive-only ceiling on Mosquitto (or on the broker at `port`)."""
    wd = workdir_for(env, system, w)
    port = port or env.mosquitto.port
    cmd = [sys.executable, "-m", "bench.baselines.aiomqtt_count", "--port", str(port), "--topic", TOPIC_FILTER]
    cmd += ["--qos", str(w.qos), "--count", str(w.count), "--timeout", str(run_timeout(w))]
    proc = start_process(cmd, wd / "count.log")
    wait_ready(proc, "aiomqtt counter")
    sim = Sim(w, port, device_prefix(system, w), wd)
    code, cpu, rss = wait_rusage(proc, run_timeout(w) + 10)
    sim_rate = sim.finish(30)
    assert proc.stdout is not None
    out = proc.stdout.read().strip()
    result = orjson.loads(out) if out else {"received": 0, "first_ns": 0, "last_ns": 0}
    ok = code == 0 and result["received"] == w.count
    seconds = (result["last_ns"] - result["first_ns"]) / 1e9
    return RunResult(
        system,
        w.name,
        w.count,
        w.readings,
        result["received"],
        None,
        seconds,
        cpu,
        rss,
        None,
        None,
        sim_rate,
        ok,
        "" if ok else f"received {result['received']} of {w.count}",
    )


def run_amqtt_ceiling(env: Env, w: Workload) -> RunResult:
    """amqtt's own publish → subscribe rate: standalone amqtt broker + the aiomqtt counter."""
    wd = workdir_for(env, "amqtt_broker", w)
    port = free_port()
    broker = start_process(
        [sys.executable, "-m", "bench.baselines.amqtt_broker", "--port", str(port)], wd / "broker.log"
    )
    try:
        wait_ready(broker, "amqtt broker")
        return run_aiomqtt_count(env, w, port, system="amqtt_pubsub")
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(15)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


def run_bridge(env: Env, w: Workload) -> RunResult:
    """The hand-rolled paho-mqtt + influxdb-client bridge, into VictoriaMetrics."""
    wd = workdir_for(env, "bridge", w)
    prefix = device_prefix("bridge", w)
    cmd = [sys.executable, "-m", "bench.baselines.paho_influx_bridge", "--port", str(env.mosquitto.port)]
    cmd += ["--topic", TOPIC_FILTER, "--qos", str(w.qos), "--url", env.victoria.url]
    cmd += ["--expect", str(w.readings), "--timeout", str(run_timeout(w))]
    proc = start_process(cmd, wd / "bridge.log")
    wait_ready(proc, "bridge")
    sim = Sim(w, env.mosquitto.port, prefix, wd)
    code, cpu, rss = wait_rusage(proc, run_timeout(w) + 30)
    sim_rate = sim.finish(30)
    assert proc.stdout is not None
    out = proc.stdout.read().strip()
    result = orjson.loads(out) if out else {"received": 0, "first_ns": 0, "done_ns": 0}
    stored = env.victoria.wait_for_count(vm_match(prefix), w.readings, timeout=30)
    ok = code == 0 and stored == w.readings
    seconds = (result["done_ns"] - (sim.started_ns or result["first_ns"])) / 1e9  # timed as the gateway
    return RunResult(
        "bridge",
        w.name,
        w.count,
        w.readings,
        result["received"],
        stored,
        seconds,
        cpu,
        rss,
        None,
        None,
        sim_rate,
        ok,
        "" if ok else f"stored {stored} of {w.readings}",
    )
