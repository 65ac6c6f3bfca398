"""Real servers for integration tests, each on a free loopback port in a temporary folder.

Every server can be started, stopped (SIGTERM), killed (SIGKILL) and started again on the
same port and data folder, so that tests can simulate outages.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> int:
    """A port p such that p .. p+n-1 are free now (e.g. the admin ports of `--workers n`)."""
    while True:
        p = free_port()
        if p + n - 1 <= 65535 and all(_free(p + i) for i in range(1, n)):
            return p


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class _Server(abc.ABC):
    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The server's command line."""

    def wait_ready(self) -> None:
        wait_for_port(self.port)

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            self.wait_ready()
        except TimeoutError as exc:
            raise TimeoutError(f"{self.name} did not start: {self.log_path.read_text()[-2000:]}") from exc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Mosquitto(_Server):
    """Mosquitto 2 with anonymous access on loopback; persistence on (for restart tests)."""

    name = "mosquitto"

    def __init__(self, workdir: Path, persistence: bool = True, tls: tuple[Path, Path, Path] | None = None) -> None:
        """`tls`: (CA, certificate, key) PEM files; the listener then speaks TLS only."""
        super().__init__(workdir)
        self.conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1"]
        if tls is not None:
            lines += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        lines += [
            "allow_anonymous true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            # run as the current user: as root Mosquitto would switch to user "mosquitto", which cannot
            # write the persistence file in the test's folder (its queued messages would vanish on a restart)
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            "log_type error",
            "log_type warning",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        return [exe, "-c", str(self.conf)]


class VictoriaMetrics(_Server):
    """VictoriaMetrics: accepts InfluxDB line protocol on /api/v2/write."""

    name = "victoria-metrics"

    def command(self) -> list[str]:
        exe = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
        return [
            exe,
            f"-storageDataPath={self.workdir / 'vmdata'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
            "-dedup.minScrapeInterval=1ms",  # a rewritten point overwrites, as in InfluxDB
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.url + "/health", timeout=0.5) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError("victoria-metrics not healthy")

    def export(self, match: str) -> list[dict[str, object]]:
        """Every sample of the series matching `match` (a PromQL series selector), flushed first."""
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=10):
            pass
        q = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=30) as r:
            body = r.read()
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]

    def count_points(self, match: str) -> int:
        return sum(len(series["values"]) for series in self.export(match))  # type: ignore[arg-type,misc]

    def wait_for_count(self, match: str, expected: int, timeout: float = 20.0) -> int:
        """Poll until `expected` points match (VictoriaMetrics makes new rows searchable
        about a second after the write), or the timeout passes; return the last count."""
        deadline = time.monotonic() + timeout
        count = self.count_points(match)
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.25)
            count = self.count_points(match)
        return count


class Redis(_Server):
    """redis-server without persistence (`--save '' --appendonly no`) on loopback."""

    name = "redis"

    def command(self) -> list[str]:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--loglevel", "warning",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def env_without_proxies() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(key, None)
    return env
