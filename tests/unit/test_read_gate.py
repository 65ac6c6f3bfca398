"""`ReadGate`: pausing and resuming a connection's socket reads by queued bytes (no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
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


class LingeringPaho(FakePaho):
    """Tells the gate the size of each read, as `PublishReader` does through `on_read`."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.gate: ReadGate | None = None
        self.got: list[int] = []

    def loop_read(self) -> None:
        assert self._sock is not None and self.gate is not None
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        self.reads += 1
        self.got.append(len(data))
        self.gate.read(len(data))


@contextlib.contextmanager
def lingering(
    linger: float, small: int = 100, **bounds: int
) -> Iterator[tuple[socket.socket, LingeringPaho, ReadGate]]:
    """A socket pair read through a gate with `linger`: (the sending end, the reader, the gate)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    inner = LingeringPaho(ours)
    inner.gate = ReadGate(inner, lambda exc: None, lambda: None, linger=linger, small=small, **bounds)
    loop = asyncio.get_running_loop()
    loop.add_reader(ours.fileno(), inner.loop_read)  # as aiomqtt registers it
    try:
        yield theirs, inner, inner.gate
    finally:
        loop.remove_reader(ours.fileno())
        ours.close()
        theirs.close()


async def test_a_small_read_lingers_and_the_next_read_takes_what_arrived_meanwhile() -> None:
    with lingering(0.5, small=25) as (theirs, inner, _):
        theirs.send(b"x" * 10)
        await asyncio.sleep(0.05)
        assert inner.got == [10]  # small: reads are off for 0.5 s
        for _ in range(3):
            theirs.send(b"y" * 10)
            await asyncio.sleep(0.02)
        assert inner.got == [10], "no read while lingering"
        await asyncio.sleep(0.6)
        assert inner.got == [10, 30], "one read after the linger took all three"
        theirs.send(b"z" * 500)  # reads of 25 bytes or more: no linger, the next one is read at once
        await asyncio.sleep(0.05)
        theirs.send(b"z" * 500)
        await asyncio.sleep(0.05)
        assert inner.got[2:] == [500, 500]


async def test_a_byte_bound_pause_outlasts_a_linger_and_its_resume_ends_one() -> None:
    with lingering(0.05, high=100, low=40) as (theirs, inner, gate):
        theirs.send(b"x")
        await asyncio.sleep(0.02)
        gate.added(120)  # paused by bytes while lingering
        await asyncio.sleep(0.08)  # the linger ended meanwhile: reads stay off
        theirs.send(b"y")
        await asyncio.sleep(0.05)
        assert gate.paused and inner.got == [1]
        assert inner._sock is not None
        assert not asyncio.get_running_loop().remove_reader(inner._sock.fileno()), "not a reader while paused"
        gate.taken(80)  # resumed: reads at once
        await asyncio.sleep(0.02)
        assert not gate.paused and inner.got == [1, 1]
    with lingering(10.0, high=100, low=40) as (theirs, inner, gate):  # a resume during a long linger
        theirs.send(b"a")
        await asyncio.sleep(0.02)
        gate.added(120)
        gate.taken(120)
        theirs.send(b"b")
        await asyncio.sleep(0.05)
        assert inner.got[:2] == [1, 1] and gate._lingering is not None  # the new small read lingers anew


async def test_a_connection_that_ended_while_lingering_is_not_read_again() -> None:
    with lingering(0.05) as (theirs, inner, _):
        theirs.send(b"x")
        await asyncio.sleep(0.02)
        inner._sock = None  # paho closed it
        theirs.send(b"y")
        await asyncio.sleep(0.08)
        assert inner.got == [1]


def test_linger_is_checked() -> None:
    with pytest.raises(ValueError):
        ReadGate(object(), lambda exc: None, lambda: None, linger=-1)
