"""The fleet: device ids, sites, topics, and the message generator.

`Fleet.message(g)` builds message `g` of the fleet (see `device_sim.pacing` for how `g`
maps to a device and a due time). `start_ns` (the epoch-ns timestamp base) may be set
until the first message is generated; the runner sets it once the connections are up.
`message` is a pure function of (config, start_ns, g): the same
seed and start give byte-identical payloads in any order and any process, which is what
lets the load mode split one fleet over processes and pre-serialise ahead of time.

Devices are `dev-00000`, `dev-00001`, ... (prefix configurable, at least 5 digits), spread
over `sites` sites named `site-00`, `site-01`, ... Payload keys, in this order:
`device_id, ts, temperature, humidity (most devices), battery, counter, firmware, site`.

Timestamps are the message's due time (start_ns + schedule offset, plus the device's clock
skew), not the moment it is actually sent, so payloads do not depend on the machine's
speed. In a batch of K readings the readings are spread evenly over the time since the
device's previous message, the last one at the due time, so a device never repeats a
timestamp (also during bursts). Silent devices (`device_sim.anomalies`) skip messages:
`indices` never yields those, and `end_for_count(M)` is the fleet index before which exactly
M messages are not skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import count as counting
from typing import Any

from device_sim.anomalies import AnomalyPlan
from device_sim.config import SimConfig
from device_sim.faults import FAULT_KINDS, FaultKind, FaultPlan, render
from device_sim.pacing import Schedule
from device_sim.signals import DeviceProfile


@dataclass(slots=True)
class SimMessage:
    """One generated MQTT message; `fault` (never in the payload) says how it is bad, if it is."""

    index: int
    device: int
    device_id: str
    topic: str
    payload: bytes
    readings: int
    fault: FaultKind | None


@dataclass(slots=True, frozen=True)
class _Card:
    """What is fixed about one device, computed on first use."""

    profile: DeviceProfile
    device_id: str
    site: str
    topic: str
    other_id: str


class Fleet:
    """The devices of one run and the generator of their messages."""

    def __init__(self, config: SimConfig, start_ns: int) -> None:
        self.config = config
        self.start_ns = start_ns
        self.devices = config.devices
        self.batch = config.batch
        self.schedule = Schedule(config.fleet_rate, config.burst)
        factor = config.burst.factor if config.burst is not None else 1.0
        self._tightest_interval = self.schedule.reading_interval(self.devices, self.batch) / factor
        self.anomalies = AnomalyPlan(
            config.seed, self.devices, config.device_rate, config.anomalies, config.clock_skew.total_seconds()
        )
        kinds = FAULT_KINDS
        if "{device_id}" not in config.topic_template:
            kinds = tuple(k for k in FAULT_KINDS if k != "device_mismatch")
        self.faults = FaultPlan(config.bad_ratio, kinds)
        self._id_width = max(5, len(str(self.devices - 1)))
        self._site_width = max(2, len(str(config.sites - 1)))
        self._cards: dict[int, _Card] = {}

    def device_id(self, device: int) -> str:
        return f"{self.config.id_prefix}{device:0{self._id_width}d}"

    def profile(self, device: int) -> DeviceProfile:
        return self._card(device).profile

    def site(self, device: int) -> str:
        return self._card(device).site

    def topic(self, device: int) -> str:
        return self._card(device).topic

    def _card(self, device: int) -> _Card:
        card = self._cards.get(device)
        if card is None:
            profile = DeviceProfile.draw(self.config.seed, device, self.config.sites, self._tightest_interval)
            device_id = self.device_id(device)
            site = f"site-{profile.site:0{self._site_width}d}"
            topic = self.config.topic_template.format(device_id=device_id, site=site)
            other = self.device_id((device + 1) % self.devices) if self.devices > 1 else f"{device_id}-other"
            card = _Card(profile, device_id, site, topic, other)
            self._cards[device] = card
        return card

    def is_skipped(self, index: int) -> bool:
        """True when message `index` is not sent (its device is silent then)."""
        return self.anomalies.is_silent(index % self.devices, index // self.devices)

    def message(self, index: int) -> SimMessage:
        """Message `index` of the fleet (whether or not it is skipped)."""
        devices = self.devices
        device, seq = index % devices, index // devices
        card = self._card(device)
        profile, device_id, site = card.profile, card.device_id, card.site
        due = self.schedule.time_of(index)
        batch = self.batch
        if seq > 0:
            step = (due - self.schedule.time_of(index - devices)) / batch
        else:
            step = self.schedule.reading_interval(devices, batch)
        anomalies = self.anomalies
        base_ns = self.start_ns + round(due * 1e9) + anomalies.skews_ns.get(device, 0)
        anomalous = device in anomalies.roles
        readings: list[dict[str, Any]] = []
        for j in range(batch):
            back = batch - 1 - j
            reading = profile.reading(
                seq * batch + j, base_ns - round(back * step * 1e9), due - back * step, device_id, site
            )
            if anomalous:
                anomalies.adjust(device, seq, reading)
            readings.append(reading)
        fault = self.faults.kind_for(index)
        nth = self.faults.occurrence(index) if fault is not None else 0
        payload = render(readings, batch > 1, fault, card.other_id, nth)
        return SimMessage(index, device, device_id, card.topic, payload, batch, fault)

    def indices(self, devices: Sequence[int], end: int | None = None) -> Iterator[int]:
        """Fleet indices of `devices` (sorted ascending) in increasing order, skipping silent
        ones, below `end` (None: without end)."""
        total = self.devices
        for seq in counting():
            for device in devices:
                index = seq * total + device
                if end is not None and index >= end:
                    return
                if not self.anomalies.is_silent(device, seq):
                    yield index

    def sent_below(self, end: int) -> int:
        """How many of the messages 0 .. end-1 are not skipped."""
        skipped = 0
        for device in self.anomalies.silent_devices():
            if end > device:
                skipped += self.anomalies.silent_below(device, (end - device + self.devices - 1) // self.devices)
        return end - skipped

    def end_for_count(self, count: int) -> int:
        """The smallest fleet index `end` such that exactly `count` messages below it are sent."""
        high = count
        while self.sent_below(high) < count:
            high *= 2
        low = count
        while low < high:
            middle = (low + high) // 2
            if self.sent_below(middle) >= count:
                high = middle
            else:
                low = middle + 1
        return low
