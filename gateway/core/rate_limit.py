"""A token bucket that paces a sink's writes (`sinks.<name>.runner.max_rate`).

Why: after an outage the backlog on the durable bus can be hours of readings; written at
full speed it would flood the store that just came back. The runner reserves one token per
item before every write call (retries included: the store never receives more than the
rate, plus a burst of one second's worth).

`reserve(n)` takes `n` tokens at once and returns how long the caller must wait before
sending them. The bucket may go into debt (a batch larger than the burst is sent after
the time it takes to earn it), so concurrent writers are paced one after the other: the
reservation is made before the wait, in call order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, holding at most `burst` (default: one second's worth, at least 1)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        if self.burst <= 0:
            raise ValueError("burst must be positive")
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def reserve(self, n: int) -> float:
        """Take `n` tokens now; return the seconds to wait before using them (0 if they were there)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return max(0.0, -self._tokens / self.rate)

    async def acquire(self, n: int) -> None:
        """Reserve `n` tokens and sleep until they are earned."""
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)
