"""Per-key token buckets (one per device), with a bounded number of keys.

`allow(key, now)` takes one token from `key`'s bucket: True when there was one. A bucket
holds up to `burst` tokens and refills at `rate` tokens per second. At most `max_keys`
buckets are kept; the least recently used is evicted first, which forgets its debt (a key
that is evicted and comes back starts with a full bucket). Not thread-safe: one event loop.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last refill)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        entry = self._buckets.get(key)
        if entry is None:
            tokens = self.burst
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
        else:
            tokens, last = entry
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            self._buckets.move_to_end(key)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
