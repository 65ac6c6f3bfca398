"""Per-device mode: one aiomqtt connection per device, thousands of them in one asyncio loop.

Each device connects with its device id as MQTT client id (clean session). A publish runs
as its own task so that a slow PUBACK for one device holds up no other; at most `inflight`
publishes per device are outstanding, and a device's publishes leave in the order they were
handed over. Connections are opened `CONNECT_CONCURRENCY` at a time. A lost connection is
replaced by a new client in the background (every `REPAIR_EVERY_S` until it works or the
run ends) and the device's messages due meanwhile fail at once. A churned device finishes
its outstanding publishes (up to the drain timeout), disconnects and connects again; its
messages wait meanwhile. A publish not acknowledged within `PUBLISH_TIMEOUT_S` fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode

from device_sim.config import SimConfig
from device_sim.driver import churn_group
from device_sim.fleet import Fleet, SimMessage
from device_sim.link import LinkError
from device_sim.stats import Stats

CONNECT_CONCURRENCY = 100
REPAIR_EVERY_S = 1.0
PUBLISH_TIMEOUT_S = 10.0
DISCONNECT_TIMEOUT_S = 5.0
_LOST = frozenset({MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST})
_LOGGER = logging.getLogger("device_sim.mqtt")


class DeviceTransport:
    """The connections of the per-device mode; see the module docstring."""

    def __init__(self, config: SimConfig, fleet: Fleet, stats: Stats) -> None:
        self._config = config
        self._fleet = fleet
        self._stats = stats
        self._qos = config.qos
        self._inflight = config.inflight
        self._clients: list[aiomqtt.Client | None] = [None] * fleet.devices
        self._outstanding = [0] * fleet.devices
        self._room: dict[int, asyncio.Event] = {}
        self._ready: dict[int, asyncio.Event] = {}
        self._publishes: set[asyncio.Task[None]] = set()
        self._upkeep: dict[int, asyncio.Task[None]] = {}
        self._closing = False

    def _new_client(self, device: int) -> aiomqtt.Client:
        config = self._config
        client = aiomqtt.Client(
            config.host,
            config.port,
            identifier=self._fleet.device_id(device),
            username=config.username,
            password=config.password.get_secret_value() if config.password is not None else None,
            tls_context=config.ssl_context(),
            keepalive=int(config.keepalive.total_seconds()),
            timeout=config.connect_timeout.total_seconds(),
            max_inflight_messages=min(self._inflight, 65_535),
            logger=_LOGGER,
        )
        client.pending_calls_threshold = 1 << 30
        return client

    async def _connect(self, device: int) -> None:
        client = self._new_client(device)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            where = f"{self._config.host}:{self._config.port}"
            raise LinkError(f"device {self._fleet.device_id(device)} cannot connect to {where}: {exc}") from None
        self._clients[device] = client

    async def open(self) -> None:
        """Connect every device; LinkError (after disconnecting the others) if any cannot connect."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(device: int) -> None:
            async with gate:
                await self._connect(device)

        results = await asyncio.gather(*(one(d) for d in range(self._fleet.devices)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close(0.0)
            raise errors[0]

    def has_room(self, message: SimMessage) -> bool:
        device = message.device
        return device not in self._ready and self._outstanding[device] < self._inflight

    async def wait_room(self, message: SimMessage) -> None:
        device = message.device
        while not self.has_room(message) and not self._closing:
            ready = self._ready.get(device)
            if ready is not None:
                await ready.wait()
            else:
                room = self._room.setdefault(device, asyncio.Event())
                room.clear()
                await room.wait()

    def send(self, message: SimMessage) -> None:
        device = message.device
        client = self._clients[device]
        if client is None:
            self._stats.failed += 1
            self._start_upkeep(device, churn=False)
            return
        self._outstanding[device] += 1
        task = asyncio.create_task(self._publish(device, client, message))
        self._publishes.add(task)
        task.add_done_callback(self._publishes.discard)

    async def _publish(self, device: int, client: aiomqtt.Client, message: SimMessage) -> None:
        stats = self._stats
        started = time.perf_counter()
        try:
            await client.publish(message.topic, message.payload, qos=self._qos, timeout=PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            stats.failed += 1
            if isinstance(exc, aiomqtt.MqttCodeError) and exc.rc in _LOST and self._clients[device] is client:
                self._clients[device] = None
                self._start_upkeep(device, churn=False)
        except asyncio.CancelledError:
            stats.failed += 1
            raise
        else:
            stats.acknowledged += 1
            if self._qos:
                stats.latency.record(time.perf_counter() - started)
        finally:
            self._outstanding[device] -= 1
            room = self._room.get(device)
            if room is not None:
                room.set()

    def churn(self, epoch: int) -> None:
        """Start reconnecting this round's share of the devices (see `churn_group`)."""
        for device in churn_group(epoch, self._fleet.devices, self._config.churn_fraction):
            self._start_upkeep(device, churn=True)

    def _start_upkeep(self, device: int, churn: bool) -> None:
        if device in self._upkeep or self._closing:
            return
        if churn:
            self._ready[device] = asyncio.Event()
        self._upkeep[device] = asyncio.create_task(self._reconnect(device, churn))

    async def _reconnect(self, device: int, churn: bool) -> None:
        try:
            old = self._clients[device]
            if churn and old is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.drain_timeout.total_seconds()):
                        while self._outstanding[device]:
                            room = self._room.setdefault(device, asyncio.Event())
                            room.clear()
                            await room.wait()
            self._clients[device] = None
            if old is not None:
                await _disconnect(old)
            while not self._closing:
                try:
                    await self._connect(device)
                    self._stats.reconnects += 1
                    return
                except LinkError:
                    await asyncio.sleep(REPAIR_EVERY_S)
        finally:
            self._upkeep.pop(device, None)
            ready = self._ready.pop(device, None)
            if ready is not None:
                ready.set()

    async def close(self, drain_timeout_s: float) -> None:
        """Wait up to `drain_timeout_s` for outstanding publishes (the rest fail), disconnect all."""
        self._closing = True
        for task in list(self._upkeep.values()):
            task.cancel()
        if self._publishes and drain_timeout_s > 0:
            await asyncio.wait(set(self._publishes), timeout=drain_timeout_s)
        for task in list(self._publishes):
            task.cancel()
        await asyncio.gather(*self._publishes, *self._upkeep.values(), return_exceptions=True)
        for event in [*self._ready.values(), *self._room.values()]:
            event.set()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(client: aiomqtt.Client) -> None:
            async with gate:
                await _disconnect(client)

        await asyncio.gather(*(one(c) for c in self._clients if c is not None))
        self._clients = [None] * self._fleet.devices


async def _disconnect(client: aiomqtt.Client) -> None:
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
        async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
            await client.__aexit__(None, None, None)
