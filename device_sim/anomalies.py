"""Anomalies (`--anomalies`) and clock skew (`--clock-skew`): which devices misbehave, and how.

Roles are drawn from the seed by ranking the devices on a hash: with anomalies on, the
first `ceil(2 % of devices)` of that ranking spike, the next as many flap and the next as
many go silent (so with at least 3 devices every role has at least one device). With a
clock skew S > 0, the first `ceil(10 % of devices)` of a second, independent ranking send
timestamps shifted by exactly +S or -S (sign drawn per device). All valid payloads stay
valid: spikes and flaps stay within the schema's range.

Each role acts in windows that recur every `ANOMALY_PERIOD_S` seconds (at the device's base
rate; counted in the device's messages, so the windows are exact in message numbers), at
an offset drawn per device:

* spike: over `SPIKE_S` the temperature rises and falls by up to +40 °C (a triangle),
  crossing `THRESHOLD_C` (50 °C) at its peak;
* flap: over `FLAP_S` the temperature alternates `THRESHOLD_C - 1` / `THRESHOLD_C + 1`
  from one message to the next;
* silent: for `SILENT_S` the device sends nothing (it stays connected).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal

from device_sim.signals import hash64, unit

Role = Literal["spike", "flap", "silent"]
THRESHOLD_C = 50.0
ANOMALY_PERIOD_S = 120.0
SPIKE_S = 20.0
FLAP_S = 20.0
SILENT_S = 30.0
ROLE_SHARE = 0.02
SKEW_SHARE = 0.10
_ROLES: tuple[Role, ...] = ("spike", "flap", "silent")


@dataclass(slots=True, frozen=True)
class Window:
    """Messages `seq` with `(seq + shift) % period < length` are inside the window."""

    period: int
    length: int
    shift: int

    def position(self, seq: int) -> int | None:
        """How far into the window `seq` is (0 .. length-1), or None when outside."""
        where = (seq + self.shift) % self.period
        return where if where < self.length else None

    def count_below(self, seqs: int) -> int:
        """How many of the messages 0 .. seqs-1 are inside the window."""
        return self._upto(seqs + self.shift) - self._upto(self.shift)

    def _upto(self, value: int) -> int:
        whole, rest = divmod(value, self.period)
        return whole * self.length + min(rest, self.length)


class AnomalyPlan:
    """The anomaly role, window and clock skew of every device of one fleet."""

    def __init__(self, seed: int, devices: int, device_rate: float, anomalies: bool, clock_skew_s: float) -> None:
        self._seed = seed
        self._device_rate = device_rate
        self.roles: dict[int, Role] = {}
        if anomalies:
            per_role = math.ceil(devices * ROLE_SHARE)
            ranked = _rank(seed, devices, 0xA1, per_role * len(_ROLES))
            for position, device in enumerate(ranked):
                self.roles[device] = _ROLES[position // per_role]
        self.skews_ns: dict[int, int] = {}
        if clock_skew_s > 0:
            skew_ns = round(clock_skew_s * 1e9)
            for device in _rank(seed, devices, 0xC10C, math.ceil(devices * SKEW_SHARE)):
                sign = 1 if hash64(seed, device, 0x516) & 1 else -1
                self.skews_ns[device] = sign * skew_ns
        self._windows: dict[int, Window] = {device: self._window(device, role) for device, role in self.roles.items()}

    def _window(self, device: int, role: Role) -> Window:
        seconds = {"spike": SPIKE_S, "flap": FLAP_S, "silent": SILENT_S}[role]
        period = max(2, round(ANOMALY_PERIOD_S * self._device_rate))
        length = max(1, min(period - 1, round(seconds * self._device_rate)))
        shift = int(unit(hash64(self._seed, device, 0x3A1)) * period)
        return Window(period, length, shift)

    def is_silent(self, device: int, seq: int) -> bool:
        """True when device `device` sends nothing in place of its message `seq`."""
        if self.roles.get(device) != "silent":
            return False
        return self._windows[device].position(seq) is not None

    def silent_below(self, device: int, seqs: int) -> int:
        """How many of the device's messages 0 .. seqs-1 are skipped."""
        if self.roles.get(device) != "silent":
            return 0
        return self._windows[device].count_below(seqs)

    def silent_devices(self) -> list[int]:
        return sorted(d for d, role in self.roles.items() if role == "silent")

    def adjust(self, device: int, seq: int, values: dict[str, object]) -> None:
        """Apply the device's spike or flap (if in its window) to a reading's values."""
        role = self.roles.get(device)
        if role is None or role == "silent":
            return
        window = self._windows[device]
        position = window.position(seq)
        if position is None:
            return
        if role == "flap":
            values["temperature"] = THRESHOLD_C + (1.0 if seq % 2 else -1.0)
            return
        fraction = (position + 0.5) / window.length
        rise = 40.0 * (1.0 - abs(2.0 * fraction - 1.0))
        temperature = values["temperature"]
        assert isinstance(temperature, float)
        values["temperature"] = round(min(temperature + rise, 120.0), 2)

    def skew_ns(self, device: int) -> int:
        return self.skews_ns.get(device, 0)


def _rank(seed: int, devices: int, salt: int, count: int) -> list[int]:
    """The first `count` devices of a seeded ranking (fewer when the fleet is smaller)."""
    return heapq.nsmallest(min(count, devices), range(devices), key=lambda d: hash64(seed, d, salt))
