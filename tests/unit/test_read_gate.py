"""`ReadGate`: pausing and resuming a connection's socket reads by queued bytes (no broker)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from gateway.ingress.read_gate import ReadGate


class FakePaho:
    """The two things the gate uses of a paho client: `_sock` and `loop_read`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        self.reads = 0

    def loop_read(self) -> None:
        assert self._sock is not None
        self._sock.recv(65536)
        self.reads += 1


async def test_reads_pause_above_high_and_resume_at_low() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    inner = FakePaho(ours)
    loop = asyncio.get_running_loop()
    loop.add_reader(ours.fileno(), inner.loop_read)  # as aiomqtt registers it
    pauses: list[int] = []
    gate = ReadGate(inner, lambda exc: None, lambda: pauses.append(1), high=100, low=40)
    try:
        gate.added(60)
        gate.added(60)  # 120 > 100: paused
        assert gate.paused and pauses == [1]
        theirs.send(b"data")
        await asyncio.sleep(0.05)
        assert inner.reads == 0, "no read while paused"
        gate.taken(70)  # 50 > 40: still paused
        await asyncio.sleep(0.05)
        assert gate.paused and inner.reads == 0
        gate.taken(10)  # 40: resumed, and it reads at once
        await asyncio.sleep(0.05)
        assert not gate.paused and inner.reads >= 1
        theirs.send(b"more")
        before = inner.reads
        await asyncio.sleep(0.05)
        assert inner.reads > before, "the socket is a reader again"
    finally:
        loop.remove_reader(ours.fileno())
        ours.close()
        theirs.close()


async def test_a_connection_that_ended_while_paused_is_not_read_again() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    inner = FakePaho(ours)
    gate = ReadGate(inner, lambda exc: None, lambda: None, high=10, low=0)
    try:
        gate.added(11)
        assert gate.paused
        inner._sock = None  # paho closed it
        gate.taken(11)
        await asyncio.sleep(0.05)
        assert not gate.paused and inner.reads == 0
    finally:
        ours.close()
        theirs.close()


async def test_a_failing_read_fails_the_connection() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    inner: Any = FakePaho(ours)
    failures: list[BaseException] = []

    def broken() -> None:
        raise ConnectionResetError("reset by peer")

    inner.loop_read = broken
    gate = ReadGate(inner, failures.append, lambda: None, high=10, low=0)
    try:
        gate.added(11)
        gate.taken(11)
        await asyncio.sleep(0.05)
        assert len(failures) == 1 and isinstance(failures[0], ConnectionResetError)
    finally:
        asyncio.get_running_loop().remove_reader(ours.fileno())
        ours.close()
        theirs.close()


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        ReadGate(object(), lambda exc: None, lambda: None, high=10, low=10)
