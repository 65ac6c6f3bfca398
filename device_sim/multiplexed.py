"""Load mode: K shared MQTT connections (`device_sim.link`) carrying the messages of many devices.

Device `d` of this process's share always uses the same connection (its position in the
share modulo K), so one device's messages stay in order. A connection that is lost is
reopened in the background (every `REPAIR_EVERY_S` until it works or the run ends); the
messages due meanwhile fail at once instead of holding up the other connections. A churned
connection (`churn`) is closed gracefully (its PUBACKs awaited up to the drain timeout)
and reopened; messages for it wait meanwhile. Client ids are `device-sim-<random>-<k>`, or
the device ids when there are as many connections as devices (`--connections` = `--devices`:
one lightweight connection per device, several times faster than the aiomqtt per-device mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from device_sim.config import SimConfig
from device_sim.driver import churn_group
from device_sim.fleet import Fleet, SimMessage
from device_sim.link import LinkError, LinkOptions, MqttLink
from device_sim.stats import Stats
from device_sim.wire import utf8

REPAIR_EVERY_S = 1.0


class _Slot:
    """One connection position: the current link and whether it may be used."""

    def __init__(self, number: int, client_id: str) -> None:
        self.number = number
        self.client_id = client_id
        self.link: MqttLink | None = None
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class LoadTransport:
    """The connections of one process in the multiplexed mode; see the module docstring."""

    def __init__(self, config: SimConfig, fleet: Fleet, devices: range, connections: int, stats: Stats) -> None:
        self._config = config
        self._fleet = fleet
        self._devices = devices
        self._stats = stats
        self._options = LinkOptions(
            host=config.host,
            port=config.port,
            qos=config.qos,
            window=config.inflight,
            keepalive_s=int(config.keepalive.total_seconds()),
            connect_timeout_s=config.connect_timeout.total_seconds(),
            ssl_context=config.ssl_context(),
            username=config.username,
            password=config.password.get_secret_value() if config.password is not None else None,
        )
        token = secrets.token_hex(4)
        if connections == len(devices):  # one connection per device: it is that device
            names = [fleet.device_id(d) for d in devices]
        else:
            names = [f"device-sim-{token}-{k}" for k in range(connections)]
        self._slots = [_Slot(k, name) for k, name in enumerate(names)]
        self._topics: dict[int, bytes] = {}
        self._closing = False

    async def open(self) -> None:
        """Open every connection; LinkError (after closing the others) if any cannot be opened."""
        results = await asyncio.gather(*(self._connect(slot) for slot in self._slots), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close(0.0)
            raise errors[0]

    async def _connect(self, slot: _Slot) -> None:
        slot.link = await MqttLink.open(self._options, self._stats, slot.client_id)
        slot.ready.set()

    def _slot(self, message: SimMessage) -> _Slot:
        return self._slots[self._devices.index(message.device) % len(self._slots)]

    def has_room(self, message: SimMessage) -> bool:
        slot = self._slot(message)
        link = slot.link
        if not slot.ready.is_set() or link is None:
            return False
        return link.closed or link.has_room()

    async def wait_room(self, message: SimMessage) -> None:
        slot = self._slot(message)
        while not self.has_room(message) and not self._closing:
            link = slot.link
            if not slot.ready.is_set() or link is None:
                await slot.ready.wait()
            else:
                await link.wait_room()

    def send(self, message: SimMessage) -> None:
        slot = self._slot(message)
        link = slot.link
        assert link is not None
        topic = self._topics.get(message.device)
        if topic is None:
            topic = self._topics[message.device] = utf8(message.topic)
        link.publish(topic, message.payload)
        if link.closed and slot.task is None and not self._closing:
            slot.task = asyncio.create_task(self._repair(slot))

    async def _repair(self, slot: _Slot) -> None:
        try:
            while not self._closing:
                try:
                    await self._connect(slot)
                    self._stats.reconnects += 1
                    return
                except LinkError:
                    await asyncio.sleep(REPAIR_EVERY_S)
        finally:
            slot.task = None

    def churn(self, epoch: int) -> None:
        """Start reconnecting this round's share of the connections (see `churn_group`)."""
        for number in churn_group(epoch, len(self._slots), self._config.churn_fraction):
            slot = self._slots[number]
            if slot.task is None and not self._closing:
                slot.task = asyncio.create_task(self._cycle(slot))

    async def _cycle(self, slot: _Slot) -> None:
        slot.ready.clear()
        try:
            if slot.link is not None:
                await slot.link.close(self._config.drain_timeout.total_seconds())
            while not self._closing:
                try:
                    await self._connect(slot)
                    self._stats.reconnects += 1
                    return
                except LinkError:
                    await asyncio.sleep(REPAIR_EVERY_S)
        finally:
            slot.ready.set()
            slot.task = None

    async def close(self, drain_timeout_s: float) -> None:
        """Stop repairs, wait up to `drain_timeout_s` for PUBACKs, disconnect everything."""
        self._closing = True
        tasks = [slot.task for slot in self._slots if slot.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        links = [slot.link for slot in self._slots if slot.link is not None]
        await asyncio.gather(*(link.close(drain_timeout_s) for link in links))
        for slot in self._slots:
            slot.ready.set()
