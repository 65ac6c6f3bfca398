"""`gateway run --workers N`: N gateway processes sharing one MQTT `$share` subscription.

The parent process only supervises; each worker is a plain `gateway run` on the same config
file, with these environment overrides (so SIGHUP reloads keep them):

* `ingress.client_id`: `<client_id>-w<i>` (each worker has its own persistent session);
* `ingress.shared_group`: the configured group, else the client id: every worker subscribes
  to `$share/<group>/<filter>` and the broker splits the messages between them;
* `data_dir`: `<data_dir>/worker-<i>` (own bus.db, dead-letter file, stores, state);
* `admin.port`: `admin.port + i` (each worker serves its own /healthz, /readyz and /metrics;
  scrape all N; port 0 stays 0, a free port each).

Supervision: SIGTERM/SIGINT are forwarded to every worker as SIGTERM (each drains as a single
gateway does) and SIGHUP as SIGHUP. When a worker exits while no stop was requested, the
others are stopped and the parent exits non-zero (the worker's own code, else 1): a service
manager restarts the whole set. Workers still running `shutdown.drain_timeout + 30s` after
the stop are killed. On Linux, a worker receives SIGTERM if the parent dies.

Refused (exit 2, before anything starts): the embedded ingress (one broker, one process);
alerts or cache invalidation (with `$share` the broker spreads one device's messages over
the workers, so no worker sees a device's whole stream); absolute file paths (bus, sinks),
which the workers would share. Not kept across workers: per-device order (each worker keeps
the order of what it receives); `gateway query` and `gateway deadletter` read one data_dir
(point `data_dir` at `<data_dir>/worker-<i>`). Changing N leaves the sessions of removed
workers (and of a former single `<client_id>`) on the broker until `session_expiry`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.ingress.config import ClientIngressConfig
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.workers")
_POLL_S = 0.1
_KILL_GRACE_S = 30.0


def refusal(settings: GatewaySettings, workers: int) -> str | None:
    """Why `--workers N` cannot run with these settings (None: it can)."""
    if workers < 1:
        return "--workers must be at least 1"
    if workers == 1:
        return None
    if not isinstance(settings.ingress, ClientIngressConfig):
        return (
            f"--workers {workers} needs the client ingress (ingress.type: client, an external broker with "
            "shared subscriptions); the embedded broker runs in one process. Use --workers 1."
        )
    if settings.alerts is not None or settings.invalidation is not None:
        return (
            f"--workers {workers} cannot run alerts or invalidation: the shared subscription spreads one device's "
            "messages over the workers, so none would see its whole stream. Use --workers 1."
        )
    for key, path in _file_paths(settings):
        if path is not None and Path(path).expanduser().is_absolute():
            return (
                f"{key} is an absolute path ({path}): the {workers} workers would share that file. Make it "
                "relative; each worker gets its own data_dir/worker-<i>."
            )
    if settings.admin.enabled and settings.admin.port and settings.admin.port + workers - 1 > 65535:
        return f"admin.port {settings.admin.port} + {workers - 1}: the workers' admin ports exceed 65535"
    return None


def worker_env(settings: GatewaySettings, index: int) -> dict[str, str]:
    """The environment overrides of worker `index` (see the module docstring)."""
    ingress = settings.ingress
    assert isinstance(ingress, ClientIngressConfig)
    env = {
        "GATEWAY_INGRESS__CLIENT_ID": f"{ingress.client_id}-w{index}",
        "GATEWAY_INGRESS__SHARED_GROUP": ingress.shared_group or _group_name(ingress.client_id),
        "GATEWAY_DATA_DIR": str(settings.data_dir / f"worker-{index}"),
    }
    if settings.admin.port:
        env["GATEWAY_ADMIN__PORT"] = str(settings.admin.port + index)
    return env


def supervise(settings: GatewaySettings, config_path: Path, workers: int) -> int:
    """Run `workers` gateway processes until a stop signal or a worker's failure; the exit code."""
    procs: list[subprocess.Popen[bytes]] = []
    stop_at: list[float] = []  # monotonic time of the stop request, when made

    def stop_all(sig: int = signal.SIGTERM) -> None:
        if not stop_at:
            stop_at.append(time.monotonic())
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested: stopping the workers", extra={"signal": signal.Signals(signum).name})
        stop_all()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGHUP)

    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        for i in range(workers):
            env = {**os.environ, **worker_env(settings, i)}
            cmd = [sys.executable, "-m", "gateway", "run", "--config", str(config_path)]
            procs.append(subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent))
            log.info("worker started", extra={"worker": i, "pid": procs[-1].pid, **worker_env(settings, i)})
        return _wait(procs, stop_all, stop_at, settings.shutdown.drain_timeout.total_seconds() + _KILL_GRACE_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait(procs: list[subprocess.Popen[bytes]], stop_all: Any, stop_at: list[float], kill_after: float) -> int:
    code = 0
    seen: set[int] = set()
    while len(seen) < len(procs):
        for i, p in enumerate(procs):
            rc = p.poll()
            if rc is None or i in seen:
                continue
            seen.add(i)
            if rc != 0 or not stop_at:
                log.error("worker exited; stopping the others", extra={"worker": i, "pid": p.pid, "exit": rc})
                code = code or (rc if rc > 0 else 1)
                stop_all()
        if stop_at and time.monotonic() - stop_at[0] > kill_after:
            log.error("workers did not stop in time; killing them", extra={"after_s": kill_after})
            stop_all(signal.SIGKILL)
            code, kill_after = code or 1, float("inf")
        time.sleep(_POLL_S)
    log.info("all workers stopped", extra={"exit": code})
    return code


def _file_paths(settings: GatewaySettings) -> list[tuple[str, str | None]]:
    paths: list[tuple[str, str | None]] = [("bus.sqlite.path", settings.bus.sqlite.path)]
    paths += [(f"sinks.{name}.path", getattr(cfg, "path", None)) for name, cfg in settings.sinks.items()]
    return paths


def _group_name(client_id: str) -> str:
    """A shared group name from the client id: '/', '+' and '#' are not allowed in it."""
    return "".join("_" if c in "/+#" else c for c in client_id)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
