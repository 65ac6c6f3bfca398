"""The SQLite bus's one writer thread: group commit, and every blocking SQLite call.

Private to the SQLite bus. The event loop folds its changes into the current `Pending`
under a lock (`with writer.batch() as p:`); everything folded in one `with` block lands in
the same transaction. The thread loops:

    wait until something is pending (or retention is due)
    sleep `commit_interval` (the longest group-commit wait; 0: none)
    swap the pending batch for an empty one      <- later changes join the next commit
    write it in one transaction and commit
    resolve the futures of the batch on the event loop

`call(fn)` runs `fn(store)` in the thread right after the commit of the batch it joined (so it
sees everything folded before it) and resolves with its result: the bus's reads (`seek`).

So a change made while a commit is in progress waits for at most that commit plus one
`commit_interval` plus its own commit. A future resolves only once its batch is committed
(with the durability `synchronous` gives).

The pending batch is bounded by what the bus lets in: publishers wait on flow control and on
the disk bound before they add rows, and acks, deliveries and drops refer to held messages.

A failing commit (disk full, I/O error) is fatal: the batch is rolled back, its futures and
every later one fail with `BusStorageError`, `on_failure` is called on the event loop, and
nothing more is written. The thread is a daemon: a process that exits without `stop()`
loses at most the changes not yet committed, as in a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from gateway.bus._sqlite_pending import Pending
from gateway.bus._sqlite_recovery import RecoveryReport, open_database
from gateway.bus._sqlite_store import Loaded, Store
from gateway.core.bus import BusClosed

log = logging.getLogger("gateway.bus.sqlite")

T = TypeVar("T")
RETENTION_EVERY_S = 1.0  # how often time-based retention runs


class BusStorageError(BusClosed):
    """The bus database failed (disk full, I/O error); the bus is closed. `__cause__` has the details."""


class Writer:
    """See the module docstring. Construct, `start()` once, `stop()` once."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        commit_interval_s: float,
        max_bytes: int,
        retention_s: float,
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._linger = commit_interval_s
        self._max_bytes = max_bytes
        self._retention_s = retention_s
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending = Pending()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.store: Store | None = None
        self.failure: BaseException | None = None
        self.stopped = False

    async def start(self) -> tuple[Loaded, RecoveryReport]:
        """Start the thread; it opens (or recovers) and loads the database. Raises what opening raised."""
        loop = self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[tuple[Loaded, RecoveryReport]] = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(opened,), name="bus-sqlite-writer", daemon=True)
        self._thread.start()
        try:
            return await opened
        except BaseException:
            self.stopped = True
            with self.batch() as p:  # if opening still succeeds (we were cancelled), the thread ends
                p.stop = True
            raise

    @contextlib.contextmanager
    def batch(self) -> Iterator[Pending]:
        """The pending batch, locked: fold changes into it; they commit together."""
        with self._lock:
            yield self._pending
        if not self._wake.is_set():
            self._wake.set()

    def waiter(self, p: Pending) -> asyncio.Future[None]:
        """A future resolved when `p` is committed (call inside `batch()`)."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        if self.failure is not None:
            fut.set_exception(self.error())
            fut.exception()  # retrieved: a publish awaits only its last chunk's future
        else:
            p.waiters.append(fut)
        return fut

    def call(self, fn: Callable[[Store], T]) -> asyncio.Future[T]:
        """Run `fn(store)` in the writer thread after the next commit; the future has its result."""
        assert self._loop is not None
        fut: asyncio.Future[T] = self._loop.create_future()
        with self.batch() as p:
            if self.failure is not None or self.stopped:
                fut.set_exception(self.error() if self.failure is not None else BusClosed("bus is closed"))
            else:
                p.calls.append((fn, fut))
        return fut

    async def stop(self) -> None:
        """Commit what is pending, close the database and end the thread. Idempotent."""
        if self._thread is None or self.stopped:
            return
        self.stopped = True
        with self.batch() as p:
            p.stop = True
            done = self.waiter(p)
        with contextlib.suppress(BusStorageError):
            await asyncio.shield(done)

    # -- the thread -----------------------------------------------------------------------

    def _run(self, opened: asyncio.Future[tuple[Loaded, RecoveryReport]]) -> None:
        try:
            conn, report = open_database(self._path, self._synchronous)
            store = Store(conn, self._max_bytes, self._retention_s)
            loaded = store.load()
        except BaseException as exc:
            self._call(_settle_one, opened, None, exc)
            return
        self.store = store
        self._call(_settle_one, opened, (loaded, report), None)
        next_retention = time.monotonic() + RETENTION_EVERY_S
        while True:
            woke = self._wake.wait(max(0.0, next_retention - time.monotonic()))
            if woke and self._linger > 0:
                time.sleep(self._linger)
            with self._lock:
                p = self._pending
                self._pending = Pending()
                self._wake.clear()
            now = time.monotonic()
            due = now >= next_retention
            if due:
                next_retention = now + RETENTION_EVERY_S
            if self.failure is None and (due or p.has_changes()):
                try:
                    store.apply(p, due)
                except BaseException as exc:
                    self.failure = exc
                    log.critical("bus database write failed; the bus is closed: %s", exc, exc_info=exc)
                    self._call(self._on_failure, exc)
            for fn, fut in p.calls:
                self._run_call(store, fn, fut)
            if p.stop:
                with contextlib.suppress(Exception):
                    store.close()
            if p.waiters:
                self._call(_settle_all, p.waiters, self.error() if self.failure is not None else None)
            if p.stop:
                return

    def _run_call(self, store: Store, fn: Callable[[Store], Any], fut: asyncio.Future[Any]) -> None:
        if self.failure is not None:
            self._call(_settle_one, fut, None, self.error())
            return
        try:
            result = fn(store)
        except Exception as exc:
            self._call(_settle_one, fut, None, exc)
        else:
            self._call(_settle_one, fut, result, None)

    def error(self) -> BusStorageError:
        err = BusStorageError(f"bus database failed: {self.failure}")
        err.__cause__ = self.failure
        return err

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)


def _settle_one(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _settle_all(futures: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for fut in futures:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
                fut.exception()  # retrieved: a publish awaits only its last chunk's future
