"""What a `SinkRunner` holds: bus messages pulled and not yet settled, and their items.

`HeldMessages` is the runner's bookkeeping, with no I/O and no awaiting:

* `take(batch)` turns a pulled bus batch into the items a sink sees (a `ReadingBatch`
  gives its readings, anything else is one item) and, for each item, the message it came
  from. Every message of the batch is held from then on.
* `settle(owners)` counts one settled item for each owner and returns the ack ids of the
  messages all of whose items are now settled; those are no longer held. The caller acks
  them. A message of one item is settled by its one item.
* `release(ack_ids)` forgets messages whose write was cancelled or whose bus closed: they
  stay unacked, for the bus to redeliver.
* `stored_watermark()`: every `Reading` taken whose `received_ns` is at or below it is
  settled. It only grows. It is "just below the oldest reading still held, else the newest
  reading taken", so it assumes readings are taken in order of receipt (see
  `gateway.core.sink_runner`).

Not thread-safe: one event loop calls it.
"""

from __future__ import annotations

from collections import Counter
from operator import attrgetter
from typing import Any

from gateway.core.bus import ReceivedMessage
from gateway.core.message import Reading, ReadingBatch

__all__ = ["HeldMessages"]

_received_ns = attrgetter("received_ns")
_ack_id = attrgetter("ack_id")
_data = attrgetter("data")


class HeldMessages:
    """The messages one runner holds, the items it still owes for each, and their receive times."""

    def __init__(self) -> None:
        self.ack_ids: set[int] = set()
        self._held_ns: dict[int, int] = {}  # ack id -> oldest receive time of its readings
        self._parts: dict[int, int] = {}  # ack id of a ReadingBatch -> its readings not yet settled
        self._taken_max_ns = 0
        self._watermark = 0

    def __bool__(self) -> bool:
        return bool(self.ack_ids)

    @property
    def open_batches(self) -> int:
        """How many `ReadingBatch` messages have readings not yet settled."""
        return len(self._parts)

    def take(self, batch: list[ReceivedMessage]) -> tuple[list[int], list[Any], list[ReceivedMessage]]:
        """Hold `batch`; return its ack ids, its items, and for each item the message it came from."""
        ids = list(map(_ack_id, batch))
        self.ack_ids.update(ids)
        datas = list(map(_data, batch))
        if set(map(type, datas)) == {Reading}:  # the common case: one reading per message
            stamps = list(map(_received_ns, datas))
            self._held_ns.update(zip(ids, stamps, strict=True))
            self._taken_max_ns = max(self._taken_max_ns, max(stamps))
            return ids, datas, batch
        items: list[Any] = []
        owners: list[ReceivedMessage] = []
        for m in batch:
            data = m.data
            if type(data) is ReadingBatch:
                items += data.readings
                owners += [m] * len(data.readings)
                self._parts[m.ack_id] = len(data.readings)
                received_ns = min(map(_received_ns, data.readings))
            elif isinstance(data, Reading):
                items.append(data)
                owners.append(m)
                received_ns = data.received_ns
            else:
                items.append(data)
                owners.append(m)
                continue
            self._held_ns[m.ack_id] = received_ns
            self._taken_max_ns = max(self._taken_max_ns, received_ns)
        return ids, items, owners

    def settle(self, owners: list[ReceivedMessage]) -> list[int]:
        """Count one settled item for each of `owners`; return (and stop holding) the ack ids now due."""
        parts = self._parts
        if parts:
            done: list[int] = []
            for ack_id, settled in Counter(map(_ack_id, owners)).items():  # a batch's readings come together
                left = parts.get(ack_id)
                if left is None:
                    done.append(ack_id)
                elif left > settled:
                    parts[ack_id] = left - settled
                else:
                    del parts[ack_id]
                    done.append(ack_id)
        else:  # no ReadingBatch held: every owner is a message of one item, listed once
            done = list(map(_ack_id, owners))
        if done:
            self.ack_ids.difference_update(done)
            held_ns = self._held_ns
            for i in done:
                held_ns.pop(i, None)
        return done

    def release(self, ack_ids: list[int]) -> None:
        """Stop holding `ack_ids` (settled or not); those not settled stay unacked on the bus."""
        self.ack_ids.difference_update(ack_ids)
        for i in ack_ids:
            self._held_ns.pop(i, None)
            self._parts.pop(i, None)

    def stored_watermark(self) -> int:
        """Epoch ns at or below which every reading taken so far is settled (see the module docstring)."""
        mark = min(self._held_ns.values()) - 1 if self._held_ns else self._taken_max_ns
        self._watermark = max(self._watermark, min(mark, self._taken_max_ns))
        return self._watermark
