"""Baseline: the MQTT → InfluxDB bridge users write themselves (paho-mqtt + influxdb-client
in batching mode, no validation beyond what the code needs, no dead letters, no backpressure).

    python -m bench.baselines.paho_influx_bridge --port P --topic 'devices/+/telemetry' --qos 1 \
        --url http://127.0.0.1:8428 --expect READINGS

Prints `ready` once subscribed; prints one JSON line when influxdb-client reported `--expect`
points written (its success callback) or `--timeout` passed:
`{"received": msgs, "written": points, "failed": points, "first_ns": t, "done_ns": t}` and
exits 0 if every point was written. The bridge itself: the lines between BRIDGE START/END.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import datetime
from typing import Any

import orjson

# ---- BRIDGE START (what a user writes) ---------------------------------------------------
import paho.mqtt.client as mqtt
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import WriteOptions
from influxdb_client.domain.write_precision import WritePrecision
from paho.mqtt.enums import CallbackAPIVersion

FIELDS = ("temperature", "humidity", "battery", "counter", "firmware")


def to_ns(ts: Any) -> int:
    if isinstance(ts, str):
        return int(datetime.fromisoformat(ts).timestamp() * 1e6) * 1000
    if isinstance(ts, float):
        return int(ts * 1e6) * 1000
    for limit, scale in ((1e11, 10**9), (1e14, 10**6), (1e17, 10**3)):
        if ts < limit:
            return int(ts) * scale
    return int(ts)


def to_point(r: dict[str, Any]) -> Any:  # influxdb-client is untyped
    p: Any = Point("environment").tag("device_id", r["device_id"]).tag("site", r["site"])  # type: ignore[no-untyped-call]
    for name in FIELDS:
        if name in r:
            p.field(name, r[name])
    return p.time(to_ns(r["ts"]), WritePrecision.NS)


def run_bridge(
    port: int, topic: str, qos: int, url: str, on_written: Any, on_message_seen: Any, on_subscribed: Any
) -> Any:
    influx = InfluxDBClient(url=url, token="unused", org="bench")
    write_api = influx.write_api(
        write_options=WriteOptions(batch_size=5000, flush_interval=250),
        success_callback=on_written,
        error_callback=lambda conf, data, exc: print(f"write failed: {exc}", file=sys.stderr),
    )

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        on_message_seen()
        data = json.loads(msg.payload)
        readings = data if isinstance(data, list) else [data]
        write_api.write(bucket="telemetry", record=[to_point(r) for r in readings])

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bridge-{time.time_ns()}")
    client.on_message = on_message
    client.on_subscribe = lambda *args: on_subscribed()
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=qos)
    client.loop_start()
    return client, write_api, influx


# ---- BRIDGE END --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--url", required=True)
    p.add_argument("--expect", type=int, required=True, help="points (readings) to wait for")
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args(argv)

    lock = threading.Lock()
    done = threading.Event()
    state = {"received": 0, "written": 0, "first_ns": 0, "done_ns": 0}

    def seen() -> None:
        state["received"] += 1  # only paho's network thread calls this
        if state["received"] == 1:
            state["first_ns"] = time.time_ns()

    def written(_conf: Any, data: str | bytes) -> None:
        with lock:
            lines = data.count(b"\n") if isinstance(data, bytes) else data.count("\n")
            state["written"] += lines + 1
            if state["written"] >= a.expect and not done.is_set():
                state["done_ns"] = time.time_ns()
                done.set()

    subscribed = threading.Event()
    client, write_api, influx = run_bridge(a.port, a.topic, a.qos, a.url, written, seen, subscribed.set)
    if not subscribed.wait(10):
        print("no SUBACK within 10 s", file=sys.stderr)
        return 1
    print("ready", flush=True)
    done.wait(a.timeout)
    client.loop_stop()
    client.disconnect()
    write_api.close()
    influx.close()
    if not state["done_ns"]:
        state["done_ns"] = time.time_ns()
    sys.stdout.write(orjson.dumps(state).decode() + "\n")
    return 0 if state["written"] >= a.expect else 1


if __name__ == "__main__":
    sys.exit(main())
