"""Shared helpers of the alerting/invalidation integration tests: an in-process gateway on a
real Mosquitto, a local HTTP receiver for webhooks, and MQTT publishing."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import yaml

from gateway.app import Gateway
from gateway.settings import load_settings
from tests.gateway_proc import SCHEMA

SECRET = "s3cret-for-tests"


def config(
    tmp_path: Path, broker_port: int, extra: dict[str, Any], subs: dict[str, Any], sinks: dict[str, Any]
) -> Path:
    cfg = {
        "data_dir": str(tmp_path / "data"),
        "ingress": {"type": "client", "host": "127.0.0.1", "port": broker_port,
                    "client_id": f"gw-{time.time_ns()}", "clean_start": True},
        "routes": [{"pattern": "devices/{device_id}/telemetry", "schema": "environment"}],
        "schemas": {"environment": SCHEMA},
        "bus": {"subscriptions": {
            "store": {"topic": "telemetry", "batch": {"max_latency": "20ms"}},
            "deadletters": {"topic": "deadletter", "dead_letter_topic": None},
            **subs,
        }},
        "sinks": {
            "store": {"type": "sqlite", "subscription": "store"},
            "deadletters": {"type": "deadletter_file", "subscription": "deadletters", "fsync": False},
            **sinks,
        },
        "admin": {"enabled": False},
        "shutdown": {"drain_timeout": "5s"},
        **extra,
    }  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def running_gateway(path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(load_settings(path), config_path=path)
    task = asyncio.create_task(gw.run(install_signal_handlers=False))
    done, _ = await asyncio.wait([task, asyncio.ensure_future(gw.wait_started())], timeout=15,
                                 return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    if task in done:
        task.result()
    try:
        yield gw
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 30)


async def publish(port: int, messages: list[tuple[str, Any]], retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{time.time_ns()}") as client:
        for topic, doc in messages:
            payload = doc if isinstance(doc, bytes) else orjson.dumps(doc)
            await client.publish(topic, payload, qos=1, retain=retain)


def telemetry(device: str, temperature: float, **fields: Any) -> tuple[str, dict[str, Any]]:
    return f"devices/{device}/telemetry", {"device_id": device, "temperature": temperature, **fields}


async def wait_for(cond: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class Receiver:
    """A local HTTP server recording POSTs; answers from `statuses` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None, hang: bool = False) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if hang:
                    time.sleep(5)
                status = outer.statuses.pop(0) if outer.statuses else 200
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                outer.answers.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
