"""Tools for the chaos tests: a publisher that survives broker deaths, RSS sampling, a stalled server.

`ResilientPublisher` publishes a fixed list of QoS 1 messages from a thread at a steady
rate and counts a message as delivered only when its PUBACK arrives. When the connection
dies (the gateway's embedded broker killed, Mosquitto restarted) it drops that client,
connects a new one (clean session: the broker it reconnects to may have lost everything)
and sends again every message not acknowledged yet. Duplicates are expected and harmless:
every message carries its own timestamp, so it is one point identity in the store.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

Message = tuple[str, bytes]


def telemetry(n: int, devices: int, prefix: str, base_ns: int | None = None) -> list[Message]:
    """`n` valid readings over `devices` devices; message i has counter i and a timestamp of its own
    (2 ms apart per device: VictoriaMetrics dedups points under 1 ms apart)."""
    base = base_ns if base_ns is not None else time.time_ns() - n * 2_000_000
    out: list[Message] = []
    for i in range(n):
        device = f"{prefix}-{i % devices}"
        body = {"device_id": device, "ts": base + i * 2_000_000, "temperature": 20.0 + i % 11, "counter": i}
        out.append((f"devices/{device}/telemetry", orjson.dumps({**body, "site": "chaos", "firmware": "1.0"})))
    return out


def _acked(info: paho.MQTTMessageInfo) -> bool:
    """PUBACK received; False for a publish paho refused because the connection had just dropped
    (its `is_published()` raises then): it is sent again on the next connection."""
    try:
        return info.is_published()
    except RuntimeError:
        return False


class ResilientPublisher(threading.Thread):
    """Publishes `messages` at `rate` per second with QoS 1 until every one is acknowledged or `timeout`."""

    def __init__(
        self, port: int, messages: list[Message], rate: float, window: int = 100, timeout: float = 120
    ) -> None:
        super().__init__(daemon=True, name="chaos-publisher")
        self.port = port
        self.messages = messages
        self.rate = rate
        self.window = window
        self.timeout = timeout
        self.acked: set[int] = set()
        self.first_sent = 0  # messages sent at least once
        self.connections = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    @property
    def done(self) -> bool:
        return len(self.acked) == len(self.messages)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        todo: deque[int] = deque(range(len(self.messages)))
        sent: dict[int, paho.MQTTMessageInfo] = {}
        client: paho.Client | None = None
        started = time.monotonic()
        while not self.done and time.monotonic() < deadline and not self._halt.is_set():
            if client is None or not client.is_connected():
                if client is not None:
                    _close(client)
                    unacked = sorted(i for i, info in sent.items() if not _acked(info))
                    self.acked.update(i for i, info in sent.items() if _acked(info))
                    todo.extendleft(reversed(unacked))
                    sent.clear()
                client = self._connect(deadline)
                continue
            for i, info in list(sent.items()):
                if _acked(info):
                    self.acked.add(i)
                    del sent[i]
            due = started + self.first_sent / self.rate
            if todo and len(sent) < self.window and (todo[0] < self.first_sent or time.monotonic() >= due):
                i = todo.popleft()
                topic, payload = self.messages[i]
                sent[i] = client.publish(topic, payload, qos=1)
                self.first_sent = max(self.first_sent, i + 1)
            else:
                time.sleep(0.002)
        if client is not None:
            self.acked.update(i for i, info in sent.items() if _acked(info))
            _close(client)

    def _connect(self, deadline: float) -> paho.Client | None:
        while time.monotonic() < deadline and not self._halt.is_set():
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"chaos-pub-{uuid.uuid4().hex[:8]}")
            client.max_inflight_messages_set(self.window)
            client.reconnect_delay_set(60, 120)  # reconnecting is this class's job, with a fresh client
            try:
                client.connect("127.0.0.1", self.port, keepalive=5)
            except OSError:
                time.sleep(0.1)
                continue
            client.loop_start()
            until = time.monotonic() + 5
            while not client.is_connected() and time.monotonic() < until:
                time.sleep(0.01)
            if client.is_connected():
                self.connections += 1
                return client
            _close(client)
            time.sleep(0.1)
        return None


def _close(client: paho.Client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()
    with contextlib.suppress(Exception):
        client.loop_stop()


def rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def file_size(path: Path) -> int:
    """Size of an SQLite database with its WAL (0 when absent)."""
    total = 0
    for p in (path, Path(f"{path}-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


class StalledServer:
    """A TCP server that accepts connections, reads whatever comes and never answers (a hung store)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="stalled-server")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setblocking(False)
            self._conns.append(conn)
            self.accepted += 1
            for c in self._conns:  # drain what was sent, so the client's writes do not block
                with contextlib.suppress(OSError):
                    c.recv(1 << 20)

    def close(self) -> None:
        self._halt.set()
        self._thread.join(2)
        for c in self._conns:
            c.close()
        self.sock.close()
