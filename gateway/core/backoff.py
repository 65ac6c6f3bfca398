"""Capped exponential backoff with full jitter, shared by every retry loop."""

from __future__ import annotations

import random
from datetime import timedelta


def backoff_delay(attempt: int, minimum: timedelta, maximum: timedelta, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based).

    The ceiling doubles from `minimum` per attempt up to `maximum`; the delay is drawn
    uniformly between half the ceiling and the ceiling ("equal jitter"), so that many
    clients retrying together spread out, yet no retry comes sooner than half the ceiling.
    """
    lo = minimum.total_seconds()
    hi = maximum.total_seconds()
    ceiling: float = min(hi, lo * (2 ** max(0, attempt - 1)))
    r: float = (rng or random).random()
    return ceiling / 2 + r * ceiling / 2


class Backoff:
    """A retry counter that yields successive jittered delays; `reset` after a success."""

    def __init__(self, minimum: timedelta, maximum: timedelta, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng

    def next_delay(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt, self.minimum, self.maximum, self._rng)

    def reset(self) -> None:
        self.attempt = 0
