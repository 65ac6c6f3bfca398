"""Fan the multiplexed mode out over processes (`--processes P`).

Process p (started with the `spawn` method, so nothing of the parent's event loop leaks
in) runs a `Session` over the devices `range(p, devices, P)` with `connections // P`
connections (the first `connections % P` processes get one more). The parent:

1. starts the children and waits until every one has connected (or one reports an error,
   which stops all of them and raises `SimError`);
2. sets one timestamp base (`PREROLL_S` ahead, unless given) and lets the children prime
   (`Session.prime`: with `--preload` they generate ahead), waits until every one has, then
   sets one shared start time: the planned one (`PREROLL_S` after step 2 began, during which
   the children pre-serialise), or `START_GRACE_S` from now if priming took longer; and
   lets them go;
3. relays stop requests (its `stop` event) through a shared flag the children poll every
   `POLL_S`; children ignore SIGINT (a Ctrl-C reaches the whole process group, and the
   parent decides) and treat SIGTERM as a stop;
4. collects each child's running totals (every `POLL_S`, for the status line) and final
   `Stats`, and merges them. A child that dies without reporting counts nothing, and the
   run raises `SimError` after the others have finished.

The message queue between them is bounded (`QUEUE_SIZE`); status updates are dropped
when it is full, final results never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from device_sim.config import SimConfig
from device_sim.session import PREROLL_S, Session, SimError
from device_sim.stats import Stats

POLL_S = 0.1
QUEUE_SIZE = 1000
SPAWN_TIMEOUT_S = 30.0
START_GRACE_S = 0.05  # from the shared start time being set to the children's first send


@dataclass(slots=True)
class FanOut:
    """The children's live totals (for the status line) and, at the end, their results."""

    live: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    duration_s: float = 0.0
    started_ns: int = 0  # wall clock (epoch ns) at which message 0 was due

    def totals(self) -> tuple[int, int, int]:
        rows = list(self.live.values())
        return (sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows))


def share_of(connections: int, processes: int, index: int) -> int:
    return connections // processes + (1 if index < connections % processes else 0)


async def run_processes(config: SimConfig, stop: asyncio.Event, start_ns: int | None, fan: FanOut) -> None:
    """Run `config` over `config.processes` processes; results accumulate in `fan`."""
    ctx = multiprocessing.get_context("spawn")
    messages: multiprocessing.Queue[tuple[str, int, Any]] = ctx.Queue(QUEUE_SIZE)
    prime, go, halt = ctx.Event(), ctx.Event(), ctx.Event()
    start_at = ctx.Array("q", 2)  # [wall-clock start, timestamp base], epoch ns
    count = config.processes
    children = [
        ctx.Process(
            target=_child_main,
            args=(config, p, count, messages, (prime, go, halt), start_at),
            name=f"device-sim-{p}",
            daemon=True,
        )
        for p in range(count)
    ]
    for child in children:
        child.start()
    loop = asyncio.get_running_loop()

    async def receive() -> tuple[str, int, Any] | None:
        with contextlib.suppress(queue.Empty):
            return await loop.run_in_executor(None, messages.get, True, POLL_S)
        return None

    async def gather(kind: str, deadline: float, what: str) -> bool:
        """Wait until every child has reported `kind`; False if `stop` was set meanwhile."""
        done: set[int] = set()
        while len(done) < count:
            item = await receive()
            if item is not None and item[0] == "error":
                raise SimError(item[2])
            if item is not None and item[0] == kind:
                done.add(item[1])
            if stop.is_set():
                return False
            if time.monotonic() > deadline or any(not c.is_alive() for c in children):
                raise SimError(f"the simulator's worker processes did not all {what}")
        return True

    try:
        spawn_deadline = time.monotonic() + SPAWN_TIMEOUT_S + config.connect_timeout.total_seconds()
        if not await gather("ready", spawn_deadline, "start"):
            return
        planned = time.time_ns() + round(PREROLL_S * 1e9)
        start_at[1] = planned if start_ns is None else start_ns
        prime.set()
        if not await gather("primed", float("inf"), "prime"):
            return
        fan.started_ns = max(planned, time.time_ns() + round(START_GRACE_S * 1e9))
        start_at[0] = fan.started_ns
        go.set()
        finished: set[int] = set()
        while len(finished) < count:
            if stop.is_set():
                halt.set()
            item = await receive()
            if item is None:
                if not any(c.is_alive() for c in children) and len(finished) < count:
                    raise SimError(f"{count - len(finished)} worker process(es) ended without a result")
                continue
            kind, index, data = item
            if kind == "status":
                fan.live[index] = data
            elif kind == "done":
                fan.stats.merge(Stats.from_wire(data["stats"]))
                fan.duration_s = max(fan.duration_s, data["duration_s"])
                fan.live[index] = (data["stats"]["sent"], data["stats"]["acknowledged"], data["stats"]["failed"])
                finished.add(index)
            elif kind == "error":
                raise SimError(data)
    finally:
        halt.set()
        prime.set()
        go.set()
        for child in children:
            await loop.run_in_executor(None, child.join, 10.0)
            if child.is_alive():
                child.terminate()


def _child_main(
    config: SimConfig, index: int, count: int, messages: Any, events: tuple[MpEvent, MpEvent, MpEvent], start_at: Any
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_child(config, index, count, messages, events, start_at))
    except SimError as exc:
        messages.put(("error", index, str(exc)))
    except Exception as exc:  # reported to the parent, which raises SimError with it
        messages.put(("error", index, f"worker process {index} failed: {type(exc).__name__}: {exc}"))


async def _child(
    config: SimConfig, index: int, count: int, messages: Any, events: tuple[MpEvent, MpEvent, MpEvent], start_at: Any
) -> None:
    prime, go, halt = events
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stats = Stats()
    devices = range(index, config.devices, count)
    session = Session(config, devices, share_of(config.effective_connections, count, index), stats)
    await session.open()

    async def watch() -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if halt.is_set():
                stop.set()
            with contextlib.suppress(queue.Full):
                messages.put_nowait(("status", index, (stats.sent, stats.acknowledged, stats.failed)))

    try:
        messages.put(("ready", index, None))
        await loop.run_in_executor(None, prime.wait)
        if halt.is_set():
            return
        watcher = asyncio.create_task(watch())
        try:
            await session.prime(int(start_at[1]), stop)
            messages.put(("primed", index, None))
            await loop.run_in_executor(None, go.wait)
            if halt.is_set():
                return
            t0 = loop.time() + (int(start_at[0]) - time.time_ns()) / 1e9
            duration = await session.run(t0, stop)
        finally:
            watcher.cancel()
    finally:
        await session.close()
    messages.put(("done", index, {"stats": stats.to_wire(), "duration_s": duration}))
