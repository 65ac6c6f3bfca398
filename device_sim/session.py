"""One process's share of a run: its devices, its connections, the sending loop and churn.

A run in one process is one `Session` over the whole fleet; with `--processes P`, process p
runs a `Session` over the devices `range(p, devices, P)` and its own share of the
connections. Every session of a run uses the same config and start time, so together they
send exactly the messages one process would have sent (same bytes, same due times).

Lifecycle: `open()` (connect; raises `SimError`), then `prime(start_ns, stop)` (fix the
timestamp base; with `--preload` also generate ahead) and `run(t0, stop)` once, then
`close()` (always; waits up to the drain timeout for acknowledgements).
"""

from __future__ import annotations

import asyncio
import contextlib

from device_sim.config import SimConfig
from device_sim.devices import DeviceTransport
from device_sim.driver import Prefetch, drive
from device_sim.fleet import Fleet
from device_sim.link import LinkError
from device_sim.multiplexed import LoadTransport
from device_sim.stats import Stats

PREROLL_S = 0.3


class SimError(Exception):
    """The run could not go ahead (e.g. the broker refused or could not be reached)."""


class Session:
    """The devices and connections of one process; see the module docstring."""

    def __init__(self, config: SimConfig, devices: range, connections: int, stats: Stats) -> None:
        self.config = config
        self.devices = devices
        self.stats = stats
        self.fleet = Fleet(config, start_ns=0)
        self.transport: DeviceTransport | LoadTransport
        if config.mode == "per-device":
            self.transport = DeviceTransport(config, self.fleet, stats)
        else:
            self.transport = LoadTransport(config, self.fleet, devices, connections, stats)
        self.end = self.fleet.end_for_count(config.count) if config.count is not None else None
        self._prefetch: Prefetch | None = None

    async def open(self) -> None:
        try:
            await self.transport.open()
        except LinkError as exc:
            raise SimError(str(exc)) from None

    async def prime(self, start_ns: int, stop: asyncio.Event) -> None:
        """Stamp message 0 `start_ns`; with `config.preload`, generate ahead (see `Prefetch.preload`)."""
        self.fleet.start_ns = start_ns
        self._prefetch = Prefetch(self.fleet, self.fleet.indices(self.devices, self.end))
        if self.config.preload:
            await self._prefetch.preload(stop)

    async def run(self, t0: float, stop: asyncio.Event) -> float:
        """Send this share's messages, message 0 due at loop time `t0`; `prime` first.

        Returns the length of the sending phase in seconds."""
        if self._prefetch is None:
            raise RuntimeError("Session.run before Session.prime")
        churner = None
        if self.config.churn is not None:
            churner = asyncio.create_task(self._churn(t0, self.config.churn.total_seconds()))
        end_s = self.config.duration.total_seconds() if self.config.duration is not None else None
        try:
            return await drive(self.fleet, self._prefetch, self.transport, self.stats, stop, t0, end_s)
        finally:
            if churner is not None:
                churner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await churner

    async def _churn(self, t0: float, every_s: float) -> None:
        loop = asyncio.get_running_loop()
        epoch = 1
        while True:
            await asyncio.sleep(max(0.0, t0 + epoch * every_s - loop.time()))
            self.transport.churn(epoch)
            epoch += 1

    async def close(self) -> None:
        await self.transport.close(self.config.drain_timeout.total_seconds())
