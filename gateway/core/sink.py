"""The sink contract: I/O only.

A sink writes a batch of items (readings, dead letters, ...) to one destination and says
what became of each. It never retries, sleeps, batches, or acks: the shared
`gateway.core.sink_runner.SinkRunner` does all of that from the `WriteResult`.

Outcome of a write, per item (the indices refer to the batch passed to `write`):

* `accepted`: stored; the runner acks it.
* `retry`: a transient failure (connection refused, 5xx, 429, 503); the runner retries
  the same items with jittered exponential backoff, or after `retry_after` when the
  destination said how long to wait. Retrying is never counted as a delivery attempt, so a
  destination that is down for an hour holds its backlog instead of dead-lettering it.
* `split`: the batch was too large (413); the runner halves it and writes the halves.
* `rejected`: permanent refusal of these items (other 4xx), with the destination's reason;
  the runner dead-letters them so they do not block the rest.

A sink raising an exception from `write` is treated as `retry` for the whole batch with
the exception as reason: a bug in a sink delays data, it does not lose it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

SortedOut = tuple[list[int], list[tuple[int, str]], list[int], list[int]]


@dataclass(slots=True)
class WriteResult:
    """What happened to each item of one `write` call (indices into the batch)."""

    accepted: list[int] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    split: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    retry_after: timedelta | None = None
    reason: str = ""

    @classmethod
    def ok(cls, n: int) -> WriteResult:
        return cls(accepted=list(range(n)))

    @classmethod
    def retry_all(cls, n: int, reason: str, retry_after: timedelta | None = None) -> WriteResult:
        return cls(retry=list(range(n)), reason=reason, retry_after=retry_after)

    @classmethod
    def split_all(cls, n: int, reason: str) -> WriteResult:
        return cls(split=list(range(n)), reason=reason)

    @classmethod
    def reject_all(cls, n: int, reason: str) -> WriteResult:
        return cls(rejected={i: reason for i in range(n)}, reason=reason)

    def sort_out(self, n: int) -> tuple[SortedOut, bool]:
        """Indices of a batch of `n` items: ((accepted, rejected+reason, split, retry), malformed).

        An item goes to the first list naming it, to retry if none does (a sink that forgets an
        item delays it, never loses it); out-of-range indices are ignored. `malformed` means
        the result did not list each index exactly once."""
        if len(self.accepted) == n and not (self.rejected or self.split or self.retry):
            everything = list(range(n))
            if self.accepted == everything:  # the common case, decided without sets
                return (everything, [], [], []), False
        seen: set[int] = set()

        def take(indices: list[int]) -> list[int]:
            picked = sorted({i for i in indices if 0 <= i < n} - seen)
            seen.update(picked)
            return picked

        accepted = take(self.accepted)
        fallback = self.reason or "rejected by the sink"
        rejected = [(i, self.rejected[i] or fallback) for i in take(list(self.rejected))]
        split = take(self.split)
        retry_idx = take(self.retry)
        missing = sorted(set(range(n)) - seen)
        retry = sorted(retry_idx + missing)
        listed = len(self.accepted) + len(self.rejected) + len(self.split) + len(self.retry)
        return (accepted, rejected, split, retry), listed != n or bool(missing)


class Sink(Protocol):
    """A destination. Constructors do no I/O; `start` connects, `close` disconnects."""

    name: str

    async def start(self) -> None:
        """Open connections. May raise; the runner then retries `start` with backoff."""

    async def write(self, items: Sequence[Any]) -> WriteResult:
        """Write `items`; report the outcome of each. Must not retry or sleep itself."""

    async def close(self) -> None:
        """Release connections. Called once, after the last `write`."""

    def healthy(self) -> bool:
        """False while the last write or start failed (used by `/readyz`)."""
