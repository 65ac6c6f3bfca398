"""The client ingress against a real Mosquitto: exactly-once hand-over, shared groups, manual
acknowledgement, persistent sessions, broker restarts, stop and setup errors."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress import mqtt_client, read_gate
from gateway.ingress.base import IngressError, MessageHandler
from gateway.ingress.client import ClientIngress
from gateway.ingress.config import ClientIngressConfig
from tests.security_certs import make_ca, make_cert
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

FAST = {"reconnect_min": "100ms", "reconnect_max": "500ms", "stop_timeout": "1s"}


def make(port: int, client_id: str, topic_filter: str, metrics: Metrics | None = None, **extra: Any) -> ClientIngress:
    values = {"host": "127.0.0.1", "port": port, "client_id": client_id, **FAST, **extra}
    config = ClientIngressConfig.model_validate(values)
    return ClientIngress(config, [topic_filter], metrics or Metrics())


@contextlib.asynccontextmanager
async def running(ingress: ClientIngress, handler: MessageHandler) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(ingress.run(handler))
    await asyncio.wait_for(ingress.wait_started(), 5)
    try:
        yield task
    finally:
        await asyncio.wait_for(ingress.stop(), 10)
        await asyncio.wait_for(task, 5)


class Collector:
    """A handler recording payloads; `fail_once` payloads raise on their first delivery."""

    def __init__(self, fail_once: frozenset[bytes] = frozenset()) -> None:
        self.messages: list[RawMessage] = []
        self.failed: list[bytes] = []
        self._fail_once = set(fail_once)

    async def __call__(self, message: RawMessage) -> None:
        if message.payload in self._fail_once:
            self._fail_once.discard(message.payload)
            self.failed.append(message.payload)
            raise RuntimeError(f"simulated bus failure for {message.payload!r}")
        self.messages.append(message)

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]


async def publish(
    port: int, topic: str, payloads: list[bytes], qos: int = 1, tls: ssl.SSLContext | None = None
) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{time.time_ns()}", tls_context=tls) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=qos)


async def wait_for(predicate: object, within: float = 8.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def numbered(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:04d}".encode() for i in range(n)]


async def test_qos1_messages_arrive_exactly_once_in_order(mosquitto: Mosquitto) -> None:
    metrics = Metrics()
    ingress = make(mosquitto.port, "cli-once", "cli-once/+/telemetry", metrics)
    handler = Collector()
    expected = numbered("once", 300)
    async with running(ingress, handler):
        assert ingress.connected and sample(metrics, "gateway_broker_connected") == 1
        await publish(mosquitto.port, "cli-once/dev-1/telemetry", expected)
        await wait_for(lambda: len(handler.messages) >= len(expected))
        await asyncio.sleep(0.3)  # a duplicate would arrive now
    assert handler.payloads == expected
    assert {(m.topic, m.qos, m.client_id) for m in handler.messages} == {("cli-once/dev-1/telemetry", 1, None)}
    assert sample(metrics, "gateway_messages_received_total", {"ingress": "client"}) == len(expected)
    assert sample(metrics, "gateway_broker_connected") == 0 and not ingress.connected


async def test_shared_group_splits_the_messages(mosquitto: Mosquitto) -> None:
    first = make(mosquitto.port, "cli-share-a", "cli-share/#", shared_group="gateways")
    second = make(mosquitto.port, "cli-share-b", "cli-share/#", shared_group="gateways")
    assert first.filters == ["$share/gateways/cli-share/#"]
    a, b = Collector(), Collector()
    expected = numbered("share", 400)
    async with running(first, a), running(second, b):
        await publish(mosquitto.port, "cli-share/dev-2", expected)
        await wait_for(lambda: len(a.messages) + len(b.messages) >= len(expected))
        await asyncio.sleep(0.3)
    assert a.messages and b.messages, (len(a.messages), len(b.messages))
    assert sorted(a.payloads + b.payloads) == expected


async def test_failed_handler_leaves_the_message_unacknowledged_and_it_is_redelivered(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    ingress = make(mosquitto.port, "cli-ack", "cli-ack/#", metrics)
    expected = numbered("ack", 50)
    handler = Collector(fail_once=frozenset({expected[10]}))
    async with running(ingress, handler):
        await publish(mosquitto.port, "cli-ack/dev-3", expected)
        await wait_for(lambda: len(handler.messages) >= len(expected))
        await asyncio.sleep(0.3)
    assert handler.failed == [expected[10]]
    # At least once, in order: closing a socket with unread data resets the connection, so the
    # broker may miss the last PUBACKs sent before the reconnect and deliver those again.
    assert list(dict.fromkeys(handler.payloads)) == expected
    duplicates = {p for p, n in Counter(handler.payloads).items() if n > 1}
    assert duplicates <= set(expected[:10]), "only messages acknowledged before the failure may come twice"
    assert "handler failed" in caplog.text
    assert sample(metrics, "gateway_broker_reconnects_total") >= 1


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_persistent_session_keeps_messages_published_while_stopped(mosquitto: Mosquitto, protocol: str) -> None:
    client_id = f"cli-persist-{protocol}"
    topic = f"cli-persist-{protocol}/dev-4"
    first = Collector()
    async with running(make(mosquitto.port, client_id, topic, protocol=protocol), first):
        await publish(mosquitto.port, topic, [b"before"])
        await wait_for(lambda: first.payloads == [b"before"])
    expected = numbered("away", 100)
    await publish(mosquitto.port, topic, expected)
    second = Collector()
    async with running(make(mosquitto.port, client_id, topic, protocol=protocol), second):
        await wait_for(lambda: len(second.messages) >= len(expected))
        await asyncio.sleep(0.2)
    assert second.payloads == expected


async def test_broker_restart_reconnects_and_later_messages_arrive(mosquitto: Mosquitto) -> None:
    metrics = Metrics()
    ingress = make(mosquitto.port, "cli-restart", "cli-restart/#", metrics)
    handler = Collector()
    async with running(ingress, handler):
        await publish(mosquitto.port, "cli-restart/dev-5", numbered("first", 20))
        await wait_for(lambda: len(handler.messages) == 20)
        mosquitto.stop()
        await wait_for(lambda: not ingress.connected)
        assert sample(metrics, "gateway_broker_connected") == 0
        mosquitto.start()
        await wait_for(lambda: ingress.connected)
        await publish(mosquitto.port, "cli-restart/dev-5", numbered("second", 20))
        await wait_for(lambda: len(handler.messages) == 40)
    assert handler.payloads == numbered("first", 20) + numbered("second", 20)
    assert sample(metrics, "gateway_broker_reconnects_total") == 1


async def test_stop_with_a_stuck_handler_returns_and_calls_it_no_more(mosquitto: Mosquitto) -> None:
    ingress = make(mosquitto.port, "cli-stuck", "cli-stuck/#", stop_timeout="200ms")
    calls: list[bytes] = []
    stuck = asyncio.Event()

    async def handler(message: RawMessage) -> None:
        calls.append(message.payload)
        await stuck.wait()

    task = asyncio.create_task(ingress.run(handler))
    await ingress.wait_started()
    await publish(mosquitto.port, "cli-stuck/dev-6", numbered("stuck", 5))
    await wait_for(lambda: len(calls) == 1)
    started = time.monotonic()
    await asyncio.wait_for(ingress.stop(), 10)
    assert time.monotonic() - started < 1.5
    await asyncio.wait_for(task, 5)
    await publish(mosquitto.port, "cli-stuck/dev-6", [b"late"])
    await asyncio.sleep(0.3)
    assert calls == [b"stuck-0000"] and not ingress.connected
    # The unacknowledged messages are still in the session for the next start.
    handler2 = Collector()
    async with running(make(mosquitto.port, "cli-stuck", "cli-stuck/#"), handler2):
        await wait_for(lambda: len(handler2.messages) >= 6)
    assert handler2.payloads == [*numbered("stuck", 5), b"late"]


async def test_missing_ca_file_is_a_setup_error() -> None:
    ingress = make(1, "cli-tls", "cli-tls/#", tls=True, ca_file="/nonexistent/ca.pem")

    async def handler(message: RawMessage) -> None:
        raise AssertionError("no message expected")

    with pytest.raises(IngressError, match=r"ingress\.ca_file: cannot load '/nonexistent/ca.pem': No such file"):
        await ingress.run(handler)
    with pytest.raises(IngressError):
        await ingress.wait_started()


async def test_a_qos0_flood_pauses_reads_instead_of_queueing_without_bound(mosquitto: Mosquitto) -> None:
    """While the handler is stuck, the local queue stops growing near `HIGH_BYTES` (reads pause,
    TCP pushes back, Mosquitto holds the rest); once it moves again every message arrives in order."""
    await flood_through_a_paused_reader(mosquitto, make(mosquitto.port, "it-gate", "it-gate/#", Metrics()), None)


async def test_a_paused_tls_connection_resumes_and_delivers_everything(tmp_path: Path) -> None:
    """The same over TLS, where the TLS layer may hold decrypted bytes that no readiness event
    announces when reads resume."""
    ca = make_ca(tmp_path, "it-gate-ca")
    cert, key = make_cert(tmp_path, ca, "it-gate-broker", server=True)
    broker = Mosquitto(tmp_path / "mosquitto", persistence=False, tls=(ca[0], cert, key))
    broker.start()
    try:
        ingress = make(broker.port, "it-gate-tls", "it-gate/#", Metrics(), tls=True, ca_file=str(ca[0]))
        publisher_tls = ssl.create_default_context(cafile=str(ca[0]))
        await flood_through_a_paused_reader(broker, ingress, publisher_tls)
    finally:
        broker.stop()


async def flood_through_a_paused_reader(broker: Mosquitto, ingress: ClientIngress, tls: ssl.SSLContext | None) -> None:
    metrics = ingress._metrics
    release = asyncio.Event()
    got: list[bytes] = []

    async def slow(message: RawMessage) -> None:
        await release.wait()
        got.append(message.payload)

    body = b"x" * (64 * 1024)
    payloads = [i.to_bytes(4, "big") + body for i in range(400)]  # 25.6 MB, 3x the bound
    async with running(ingress, slow):
        await publish(broker.port, "it-gate/flood", payloads, qos=0, tls=tls)
        await wait_for(lambda: sample(metrics, "gateway_ingress_read_pauses_total") >= 1)
        await asyncio.sleep(0.5)  # a reader that kept reading would queue the rest meanwhile
        gate = ingress._gate
        assert gate is not None and gate.paused
        assert gate.queued <= read_gate.HIGH_BYTES + mqtt_client.READ_SIZE + len(payloads[0])
        release.set()
        await wait_for(lambda: len(got) == len(payloads), within=20)
    assert got == payloads
