"""The admin endpoint on its own thread: it answers while the gateway's event loop is busy,
and `/healthz` turns 503 when that loop stops making progress."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import pytest

from gateway.admin import server
from gateway.admin.server import AdminServer, Readiness
from gateway.core.metrics import Metrics

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, bytes, float]:
    """(status, body, seconds taken) of GET `path`."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read(), time.monotonic() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.monotonic() - t0


def get_later(port: int, path: str, delay: float) -> tuple[int, bytes, float]:
    time.sleep(delay)
    return get(port, path)


async def test_the_endpoint_answers_while_the_loop_is_blocked_and_reports_a_stall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "STALL_AFTER_S", 1.0)
    refreshed: list[float] = []
    metrics = Metrics()
    admin = AdminServer("127.0.0.1", 0, metrics, lambda: Readiness(True, {}), lambda: refreshed.append(1))
    await admin.start()
    try:
        status, _, _ = await asyncio.to_thread(get, admin.port, "/healthz")
        assert status == 200
        await asyncio.sleep(3 * server.BEAT_S)
        assert refreshed, "the gauges are refreshed on the gateway's loop without a scrape"

        loop = asyncio.get_running_loop()
        during = [loop.run_in_executor(None, get, admin.port, path) for path in ("/metrics", "/readyz")]
        late = loop.run_in_executor(None, get_later, admin.port, "/healthz", 1.6)
        time.sleep(2.0)  # noqa: ASYNC251  (the point: the gateway's loop is stuck; the endpoint still answers)
        for request in during:
            status, body, took = await request
            assert status == 200 and took < 1.0, (status, took)
        status, body, took = await late
        assert status == 503 and b"event loop stalled" in body and took < 1.0

        await asyncio.sleep(3 * server.BEAT_S)  # the loop runs again: healthy again
        status, _, _ = await asyncio.to_thread(get, admin.port, "/healthz")
        assert status == 200
    finally:
        await admin.stop()
    with pytest.raises(OSError):
        get(admin.port, "/healthz")


async def test_route_hooks_run_on_the_gateway_loop() -> None:
    main = asyncio.get_running_loop()
    seen: list[bool] = []

    async def hook(method: str, target: str, body: bytes) -> tuple[int, bytes, str] | None:
        seen.append(asyncio.get_running_loop() is main)
        return (200, b"hooked\n", "text/plain") if target == "/hooked" else None

    admin = AdminServer("127.0.0.1", 0, Metrics(), lambda: Readiness(False, {"why": "test"}), lambda: None)
    admin.add_route_hook(hook)
    await admin.start()
    try:
        assert (await asyncio.to_thread(get, admin.port, "/hooked"))[:2] == (200, b"hooked\n")
        status, body, _ = await asyncio.to_thread(get, admin.port, "/readyz")
        assert status == 503 and b'"why":"test"' in body
        assert seen == [True, True]
    finally:
        await admin.stop()


async def test_a_port_in_use_is_a_clear_error() -> None:
    first = AdminServer("127.0.0.1", 0, Metrics(), lambda: Readiness(True, {}), lambda: None)
    await first.start()
    try:
        second = AdminServer("127.0.0.1", first.port, Metrics(), lambda: Readiness(True, {}), lambda: None)
        with pytest.raises(server.AdminServerError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


async def test_metrics_can_be_restricted_to_named_series() -> None:
    metrics = Metrics()
    metrics.messages_received.labels("client").inc(3)
    admin = AdminServer("127.0.0.1", 0, metrics, lambda: Readiness(True, {}), lambda: None)
    await admin.start()
    try:
        _, everything, _ = await asyncio.to_thread(get, admin.port, "/metrics")
        query = "/metrics?name[]=gateway_messages_received_total&name[]=gateway_ingest_to_stored_seconds_bucket"
        status, some, _ = await asyncio.to_thread(get, admin.port, query)
    finally:
        await admin.stop()
    assert status == 200 and b'gateway_messages_received_total{ingress="client"} 3.0' in some
    names = {line.split(b"{")[0].split(b" ")[0] for line in some.splitlines() if not line.startswith(b"#")}
    assert names <= {b"gateway_messages_received_total", b"gateway_ingest_to_stored_seconds_bucket"}
    assert len(some) < len(everything) / 4
