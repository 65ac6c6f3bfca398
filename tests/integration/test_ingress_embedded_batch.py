"""The embedded ingress's batched hand-over, with real MQTT clients: batching of in-flight QoS 1
publishes, order, PUBACK after the batch handler, ACL refusals inside a batch, failed batches,
and the backpressure bound counting batches in the handler."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiomqtt
import pytest

from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.config import EmbeddedIngressConfig
from gateway.ingress.embedded import EmbeddedIngress
from tests.integration.test_security_broker import password_file
from tests.servers import free_port

pytestmark = pytest.mark.integration


class Recorder:
    """A batch handler that blocks its first call until `release`, and records every call."""

    def __init__(self, fail_when: Callable[[Sequence[RawMessage]], bool] = lambda _: False) -> None:
        self.calls: list[list[bytes]] = []
        self.events: list[tuple[str, bytes]] = []  # ("returned", payload) / ("acked", payload), in time order
        self.release = asyncio.Event()
        self._fail_when = fail_when

    async def __call__(self, messages: Sequence[RawMessage]) -> None:
        self.calls.append([m.payload for m in messages])
        if len(self.calls) == 1:
            await self.release.wait()
        if self._fail_when(messages):
            raise RuntimeError("bus closed")
        self.events += [("returned", m.payload) for m in messages]


async def no_single_calls(message: RawMessage) -> None:
    raise AssertionError("the batch handler is preferred")


@contextlib.asynccontextmanager
async def running(config: EmbeddedIngressConfig, recorder: Recorder) -> AsyncIterator[tuple[EmbeddedIngress, Metrics]]:
    metrics = Metrics()
    ingress = EmbeddedIngress(config, metrics)
    ingress.batch_handler = recorder
    task = asyncio.create_task(ingress.run(no_single_calls))
    await asyncio.wait_for(ingress.wait_started(), 5)
    try:
        yield ingress, metrics
    finally:
        recorder.release.set()
        await asyncio.wait_for(ingress.stop(), 10)
        await asyncio.wait_for(task, 5)


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def queued(ingress: EmbeddedIngress) -> int:
    return ingress._broker.queued() if ingress._broker is not None else 0


async def publish(device: aiomqtt.Client, recorder: Recorder, topic: str, payload: bytes) -> None:
    await device.publish(topic, payload, qos=1)  # returns on PUBACK
    recorder.events.append(("acked", payload))


async def test_in_flight_qos1_publishes_are_handed_over_in_batches_in_order_and_acked_after() -> None:
    port = free_port()
    recorder = Recorder()
    sent = [b"%03d" % i for i in range(50)]
    async with (
        running(EmbeddedIngressConfig(port=port), recorder) as (ingress, _),
        aiomqtt.Client("127.0.0.1", port, identifier="batch-1", max_inflight_messages=50) as device,
    ):
        publishers = [asyncio.create_task(publish(device, recorder, "batch/d1", p)) for p in sent]
        await wait_for(lambda: len(recorder.calls) == 1 and queued(ingress) == 50 - len(recorder.calls[0]))
        await asyncio.sleep(0.2)
        assert recorder.events == [], "no PUBACK while the batch handler has not returned"
        recorder.release.set()
        await asyncio.wait_for(asyncio.gather(*publishers), 10)
    assert [p for call in recorder.calls for p in call] == sent, "every publish once, in order"
    assert len(recorder.calls) == 2, f"the publishes queued meanwhile go in one call: {recorder.calls}"
    acked = [p for kind, p in recorder.events if kind == "acked"]
    assert acked == sent, "PUBACKs in the order the device sent the publishes"
    for payload in sent:
        assert recorder.events.index(("returned", payload)) < recorder.events.index(("acked", payload))


async def test_an_acl_refused_publish_inside_a_batch_is_counted_and_the_others_go_through(tmp_path: Path) -> None:
    port = free_port()
    config = EmbeddedIngressConfig(port=port, auth={"password_file": str(password_file(tmp_path))})
    recorder = Recorder()
    own = [("devices/dev-a/telemetry", b"a%02d" % i) for i in range(11)]
    batch = [*own[:6], ("devices/dev-b/telemetry", b"forged"), *own[6:]]
    async with (
        running(config, recorder) as (ingress, metrics),
        aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier="batch-acl",
            username="dev-a",
            password="secret-a-123",
            max_inflight_messages=20,
        ) as device,
    ):
        first = asyncio.create_task(publish(device, recorder, "devices/dev-a/telemetry", b"first"))
        await wait_for(lambda: len(recorder.calls) == 1)
        publishers = [asyncio.create_task(publish(device, recorder, t, p)) for t, p in batch]
        await wait_for(lambda: queued(ingress) == len(batch))
        recorder.release.set()
        await asyncio.wait_for(asyncio.gather(first, *publishers), 10)
    assert recorder.calls == [[b"first"], [p for _, p in own]], "one call for the batch, without the refused one"
    assert metrics.registry.get_sample_value("gateway_acl_denied_total", {"action": "publish"}) == 1
    acked = [p for kind, p in recorder.events if kind == "acked"]
    assert acked == [b"first"] + [p for _, p in batch], "the refused publish is acknowledged in its place"


async def test_a_failed_batch_is_not_acknowledged_and_later_publishes_still_flow() -> None:
    port = free_port()
    recorder = Recorder(fail_when=lambda messages: any(m.payload == b"boom" for m in messages))
    async with (
        running(EmbeddedIngressConfig(port=port), recorder) as (ingress, _),
        aiomqtt.Client("127.0.0.1", port, identifier="batch-fail", max_inflight_messages=20) as device,
    ):
        first = asyncio.create_task(publish(device, recorder, "batch/d2", b"first"))
        await wait_for(lambda: len(recorder.calls) == 1)
        failing = [asyncio.create_task(publish(device, recorder, "batch/d2", p)) for p in (b"x", b"boom", b"y")]
        await wait_for(lambda: queued(ingress) == 3)
        recorder.release.set()
        await asyncio.wait_for(first, 5)
        await publish(device, recorder, "batch/d2", b"later")
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in failing), "no publish of the failed batch is acknowledged"
        for task in failing:
            task.cancel()
    assert recorder.calls == [[b"first"], [b"x", b"boom", b"y"], [b"later"]]
    assert [p for kind, p in recorder.events if kind == "acked"] == [b"first", b"later"]


async def test_a_batch_in_the_handler_counts_against_max_queued_per_connection() -> None:
    port = free_port()
    limit = 5
    recorder = Recorder()
    async with (
        running(EmbeddedIngressConfig(port=port, max_queued_per_connection=limit), recorder) as (ingress, _),
        aiomqtt.Client("127.0.0.1", port, identifier="batch-gate", max_inflight_messages=50) as device,
    ):
        publishers = [asyncio.create_task(publish(device, recorder, "batch/d3", b"%03d" % i)) for i in range(50)]
        await wait_for(lambda: len(recorder.calls) == 1)
        await asyncio.sleep(0.5)
        read = len(recorder.calls[0]) + queued(ingress)
        assert read <= limit + 3, f"the gate stopped reading the connection ({read} read)"
        recorder.release.set()
        await asyncio.wait_for(asyncio.gather(*publishers), 10)
    assert [p for call in recorder.calls for p in call] == [b"%03d" % i for i in range(50)]
    assert max(len(call) for call in recorder.calls) <= limit


async def test_qos0_publishes_still_queued_when_the_device_disconnects_are_handed_over() -> None:
    port = free_port()
    recorder = Recorder()  # its first call blocks: the rest queue up behind it
    async with running(EmbeddedIngressConfig(port=port, max_queued_per_connection=1000), recorder) as (ingress, _):
        async with aiomqtt.Client("127.0.0.1", port, identifier="emb-batch-q0") as device:
            for i in range(3000):
                await device.publish("emb-batch/q0", b"%04d" % i, qos=0)
            await wait_for(lambda: len(recorder.calls) == 1 and queued(ingress) > 0)
        # the device is gone, with publishes still queued on its connection
        await asyncio.sleep(0.2)
        recorder.release.set()
        await wait_for(lambda: sum(len(c) for c in recorder.calls) == 3000)
    got = [p for call in recorder.calls for p in call]
    assert got == [b"%04d" % i for i in range(3000)], "every publish handed over once, in order"
