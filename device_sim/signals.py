"""Realistic per-device signals, deterministic under a seed.

Every random choice is a counter-based hash of (seed, device, reading number), never the
state of a shared generator, so any message can be generated alone, in any order, in any
process, and always comes out the same. Per device, drawn once from the seed:

* temperature: a base of 18-26 °C plus a daily sine cycle (amplitude 2-6 °C, peaking near
  15:00 UTC, up to 5 hours earlier depending on the site) plus gaussian noise (sigma 0.1-0.3 °C);
* humidity (90 % of devices have the sensor): a base of 35-65 % that falls when the
  temperature rises, plus noise, clamped to 0-100;
* battery: starts at 60-100 % and drains 0.05-0.5 % per hour of run time (never below 0);
* counter: starts at 0-999,999 and grows by 1 per reading (strictly increasing);
* firmware: `1.M.P`, whose patch level rises by one every 5,000-50,000 readings;
* timestamp form: epoch ms (60 %), epoch seconds with 6 decimals (15 %), RFC 3339 with
  microseconds (15 %), epoch µs (5 %) or epoch ns (5 %); coarser forms are avoided when
  one device's readings come closer than 1 ms (or 1 µs) apart, so its timestamps never repeat.

Not promised: physical accuracy; values are plausible, not modelled.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

MASK64 = (1 << 64) - 1
DAY_S = 86_400.0
TWO_PI = 2.0 * math.pi
_U21 = 1.0 / (1 << 21)
TIMESTAMP_FORMS = ("ms", "s", "rfc3339", "us", "ns")
_FORM_WEIGHTS = (0.60, 0.15, 0.15, 0.05, 0.05)


def mix64(value: int) -> int:
    """SplitMix64 finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def hash64(*parts: int) -> int:
    """A 64-bit hash of a sequence of integers (order matters)."""
    state = 0x6A09E667F3BCC908
    for part in parts:
        state = mix64(state ^ (part & MASK64))
    return state


def unit(value: int) -> float:
    """The top 53 bits of a hash as a float in [0, 1)."""
    return (value >> 11) * (1.0 / (1 << 53))


def gauss3(value: int) -> float:
    """An approximately standard normal number from three 21-bit slices of a hash."""
    a = (value & 0x1FFFFF) * _U21
    b = ((value >> 21) & 0x1FFFFF) * _U21
    c = ((value >> 42) & 0x1FFFFF) * _U21
    return (a + b + c - 1.5) * 2.0


def format_timestamp(ns: int, form: str) -> int | float | str:
    """Epoch nanoseconds in one of `TIMESTAMP_FORMS`, as a JSON-ready value."""
    if form == "ms":
        return ns // 1_000_000
    if form == "s":
        return round(ns / 1e9, 6)
    if form == "us":
        return ns // 1_000
    if form == "ns":
        return ns
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_second_text(seconds)}.{rest // 1_000:06d}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@dataclass(slots=True, frozen=True)
class DeviceProfile:
    """One device's fixed parameters; `key` seeds its per-reading noise."""

    index: int
    key: int
    site: int
    base_temp: float
    amplitude: float
    phase: float
    noise: float
    has_humidity: bool
    humidity_base: float
    battery_start: float
    drain_per_s: float
    counter_start: int
    firmware_minor: int
    firmware_patch: int
    firmware_every: int
    ts_form: str

    @classmethod
    def draw(cls, seed: int, index: int, sites: int, reading_interval_s: float) -> DeviceProfile:
        """The profile of device `index` under `seed`."""
        key = hash64(seed, index, 0x5EED)
        r = [unit(hash64(key, n)) for n in range(12)]
        site = int(r[0] * sites)
        forms = [(f, w) for f, w in zip(TIMESTAMP_FORMS, _FORM_WEIGHTS, strict=True)]
        if reading_interval_s < 1e-6:
            forms = [("ns", 1.0)]
        elif reading_interval_s < 1e-3:
            forms = [(f, w) for f, w in forms if f != "ms"]
        return cls(
            index=index,
            key=key,
            site=site,
            base_temp=18.0 + 8.0 * r[1],
            amplitude=2.0 + 4.0 * r[2],
            phase=-2.36 + TWO_PI * (site % 6) / 24.0 + 0.3 * (r[3] - 0.5),
            noise=0.1 + 0.2 * r[4],
            has_humidity=r[5] < 0.9,
            humidity_base=35.0 + 30.0 * r[6],
            battery_start=60.0 + 40.0 * r[7],
            drain_per_s=(0.05 + 0.45 * r[8]) / 3600.0,
            counter_start=int(r[9] * 1_000_000),
            firmware_minor=int(r[10] * 10),
            firmware_patch=int(r[11] * 20),
            firmware_every=5_000 + int(unit(hash64(key, 12)) * 45_000),
            ts_form=_pick(forms, unit(hash64(key, 13))),
        )

    def reading(self, number: int, time_ns: int, elapsed_s: float, device_id: str, site: str) -> dict[str, Any]:
        """Reading `number` of this device, stamped `time_ns` (payload keys in payload order)."""
        noise = mix64(self.key ^ number)
        cycle = self.amplitude * math.sin(TWO_PI * ((time_ns / 1e9) % DAY_S) / DAY_S + self.phase)
        values: dict[str, Any] = {
            "device_id": device_id,
            "ts": format_timestamp(time_ns, self.ts_form),
            "temperature": round(self.base_temp + cycle + self.noise * gauss3(noise), 2),
        }
        if self.has_humidity:
            humidity = self.humidity_base - 1.5 * cycle + 1.5 * gauss3(mix64(noise))
            values["humidity"] = round(min(100.0, max(0.0, humidity)), 1)
        values["battery"] = round(max(0.0, self.battery_start - self.drain_per_s * max(elapsed_s, 0.0)), 1)
        values["counter"] = self.counter_start + number
        values["firmware"] = f"1.{self.firmware_minor}.{self.firmware_patch + number // self.firmware_every}"
        values["site"] = site
        return values


def _pick(weighted: list[tuple[str, float]], draw: float) -> str:
    total = sum(w for _, w in weighted)
    point = draw * total
    for name, weight in weighted:
        point -= weight
        if point < 0:
            return name
    return weighted[-1][0]
