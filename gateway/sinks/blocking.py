"""`BlockingSink`: the `Sink` methods for sinks whose client library blocks.

`write` and `close` run the subclass's `_write_sync` / `_close_sync` in a worker thread
(`asyncio.to_thread`), so the event loop never waits on a socket or a disk. An empty batch
is answered without a thread hop. Cancelling an awaiting `write` does not stop the thread:
subclasses keep their own lock so that a later `close` waits for a write still running.
`healthy()` reports `self._healthy`, which subclasses keep up to date.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from gateway.core.sink import WriteResult


class BlockingSink(ABC):
    name: str
    _healthy: bool = True

    async def write(self, items: Sequence[Any]) -> WriteResult:
        if not items:
            return WriteResult()
        return await asyncio.to_thread(self._write_sync, list(items))

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def healthy(self) -> bool:
        return self._healthy

    @abstractmethod
    def _write_sync(self, items: list[Any]) -> WriteResult:
        """Write `items` (never empty), blocking; report each item's outcome."""

    @abstractmethod
    def _close_sync(self) -> None:
        """Release connections and files, blocking."""
