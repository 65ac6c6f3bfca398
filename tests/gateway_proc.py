"""Run the real `gateway` command in a subprocess for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.servers import free_port

SCHEMA = {
    "measurement": "environment",
    "device_id_field": "device_id",
    "timestamp_field": "ts",
    "fields": {
        "temperature": {"type": "float", "min": -40, "max": 125, "required": True},
        "humidity": {"type": "float", "min": 0, "max": 100},
        "counter": {"type": "int", "min": 0},
        "firmware": {"type": "string"},
        "site": {"type": "string", "tag": True},
    },
}


def write_config(tmp_path: Path, ingress: dict[str, Any], sinks: dict[str, Any], subscriptions: dict[str, Any]) -> Path:
    cfg = {
        "data_dir": str(tmp_path / "data"),
        "log": {"level": "info", "format": "json"},
        "ingress": ingress,
        "routes": [{"pattern": "devices/{device_id}/telemetry", "schema": "environment"}],
        "schemas": {"environment": SCHEMA},
        "bus": {"subscriptions": subscriptions},
        "sinks": sinks,
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "shutdown": {"drain_timeout": "20s"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class GatewayProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.args = args  # extra `gateway run` arguments, e.g. ("--workers", "2")
        self.env = {**os.environ, **(env or {})}
        data = yaml.safe_load(config.read_text())
        self.admin_port = int(data["admin"]["port"])
        self.log_path = config.parent / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        if wait_ready:
            self.wait_ready()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.logs()[-3000:]}")
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready: {self.logs()[-3000:]}")

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples `name{labels...}` in /metrics (0 when absent)."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                series = head[len(name) :]
                if series and series[0] not in "{ ":
                    continue
                if labels in series:
                    total += float(value)
        return total

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return int(self.proc.returncode)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
