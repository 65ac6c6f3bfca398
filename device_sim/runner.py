"""The in-process API: run a simulation and get its `Summary`.

    summary = await simulate(SimConfig(port=1883, devices=20, rate=5, count=1000))

`simulate` connects every connection first, then starts the schedule a moment later
(`PREROLL_S`, or once `preload` has generated ahead, if that takes longer), sends until the
count or duration is reached or `stop` is set, waits up to the drain timeout for outstanding
acknowledgements and disconnects. It raises `SimError` when the broker cannot be reached or
refuses a connection (nothing is sent then), and otherwise returns a summary in which
`sent == acknowledged + failed`.

`start_ns` fixes the payload timestamps' base (epoch ns); by default it is the wall-clock
time at which the first message is planned to be due (with a long `preload`, the run starts
later than planned and the timestamps stay on the planned schedule). With the same config
(seed included) and `start_ns`, two runs send byte-identical payloads. Signals are the
caller's business (the CLI turns SIGINT/SIGTERM into `stop`).
"""

from __future__ import annotations

import asyncio
import sys
import time

from device_sim.config import SimConfig
from device_sim.processes import FanOut, run_processes
from device_sim.report import StatusLine, Totals
from device_sim.session import PREROLL_S, Session, SimError
from device_sim.stats import Stats, Summary

__all__ = ["SimError", "simulate"]


async def simulate(config: SimConfig, stop: asyncio.Event | None = None, start_ns: int | None = None) -> Summary:
    """Run the simulation described by `config`; see the module docstring."""
    stop = stop if stop is not None else asyncio.Event()
    show = config.progress if config.progress is not None else sys.stderr.isatty()
    if show and config.preload:
        print("device-sim: generating the messages before the start (--preload) ...", file=sys.stderr, flush=True)
    if config.processes > 1:
        fan = FanOut()
        status = StatusLine(fan.totals) if show else None
        if status is not None:
            status.start()
        try:
            await run_processes(config, stop, start_ns, fan)
        finally:
            if status is not None:
                await status.stop()
        return _summary(config, fan.stats, fan.duration_s, fan.started_ns, stop)

    stats = Stats()
    session = Session(config, range(config.devices), config.effective_connections, stats)
    await session.open()

    def totals() -> Totals:
        return stats.sent, stats.acknowledged, stats.failed

    status = StatusLine(totals) if show else None
    try:
        loop = asyncio.get_running_loop()
        planned = loop.time() + PREROLL_S
        await session.prime(start_ns if start_ns is not None else time.time_ns() + round(PREROLL_S * 1e9), stop)
        if status is not None:
            status.start()
        t0 = max(planned, loop.time())  # a preload that took longer than the preroll starts at once
        started_ns = time.time_ns() + round((t0 - loop.time()) * 1e9)
        duration = await session.run(t0, stop)
    finally:
        await session.close()
        if status is not None:
            await status.stop()
    return _summary(config, stats, duration, started_ns, stop)


def _summary(config: SimConfig, stats: Stats, duration_s: float, started_ns: int, stop: asyncio.Event) -> Summary:
    return Summary.build(
        stats,
        duration_s,
        started_ns=started_ns,
        qos=config.qos,
        mode=config.mode,
        devices=config.devices,
        connections=config.effective_connections,
        processes=config.processes,
        interrupted=stop.is_set(),
    )
