"""When each message is due: a drift-free schedule over the whole fleet.

Message `g` (counting from 0 over the fleet) belongs to device `g % devices` and is that
device's message number `g // devices`; it is due `Schedule.time_of(g)` seconds after the
start. Due times are computed from `g` alone, never by adding up sleeps, so a sender that
falls behind catches up and the long-run rate is exact (no drift).

With a burst spec the rate is `rate * factor` during the first `length` of every period
`every` and `rate` for the rest of it. Devices are interleaved evenly: at a constant rate
R and N devices, each device sends every N/R seconds, the devices offset by 1/R.

Guarantees: `time_of` is non-decreasing in `g`; `count_before(t)` is the number of
messages due strictly before `t` (so `time_of(count_before(t)) >= t`), up to float rounding.
"""

from __future__ import annotations

import math

from device_sim.config import BurstSpec


class Schedule:
    """Due times (seconds from the start) of the fleet's messages."""

    def __init__(self, rate: float, burst: BurstSpec | None = None) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be a positive finite number, got {rate}")
        self.rate = rate
        if burst is None:
            self._period = 0.0
            return
        self._period = burst.every.total_seconds()
        self._burst_len = burst.length.total_seconds()
        self._burst_rate = rate * burst.factor
        self._burst_msgs = self._burst_rate * self._burst_len
        self._period_msgs = self._burst_msgs + rate * (self._period - self._burst_len)

    @property
    def mean_rate(self) -> float:
        """Messages per second averaged over whole burst periods."""
        return self.rate if not self._period else self._period_msgs / self._period

    def time_of(self, index: int) -> float:
        """Seconds after the start at which message `index` is due."""
        if not self._period:
            return index / self.rate
        periods, rest = divmod(float(index), self._period_msgs)
        start = periods * self._period
        if rest < self._burst_msgs:
            return start + rest / self._burst_rate
        return start + self._burst_len + (rest - self._burst_msgs) / self.rate

    def count_before(self, seconds: float) -> int:
        """How many messages are due strictly before `seconds` after the start."""
        if seconds <= 0:
            return 0
        if not self._period:
            position = seconds * self.rate
        else:
            periods, within = divmod(seconds, self._period)
            position = periods * self._period_msgs
            if within < self._burst_len:
                position += within * self._burst_rate
            else:
                position += self._burst_msgs + (within - self._burst_len) * self.rate
        count = math.ceil(position)
        # Float rounding may put the boundary one message off; settle it with time_of.
        while count > 0 and self.time_of(count - 1) >= seconds:
            count -= 1
        while self.time_of(count) < seconds:
            count += 1
        return count

    def reading_interval(self, devices: int, batch: int) -> float:
        """Nominal seconds between one device's consecutive readings at the base rate."""
        return devices / (self.rate * batch)
