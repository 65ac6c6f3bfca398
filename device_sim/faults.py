"""Bad messages: which messages are bad, of which kind, and how each kind is made.

With a bad ratio F (a fraction, read as an exact ratio p/q), message `g` of the fleet is
bad when `floor((g + 1) * p / q) > floor(g * p / q)`: among the first M messages exactly
`floor(M * p / q)` are bad, spread evenly. The j-th bad message (j counting from 0) has kind
`kinds[j % len(kinds)]`, so kinds come in equal proportions, in the order of `FAULT_KINDS`.
`device_mismatch` is left out when the topic template has no `{device_id}` (the gateway
could not tell). Which messages are bad depends only on `g` and F, not on the seed.

Each kind, and the gateway reject code it must cause (`EXPECTED_REJECT`):

| kind             | what the payload is                                              | reject code    |
|------------------|------------------------------------------------------------------|----------------|
| malformed_json   | the valid payload cut in half                                    | malformed_json |
| wrong_type       | temperature as a JSON string ("21.5")                            | wrong_type     |
| out_of_range     | temperature 150.5 (even j) or humidity -5.0 (odd j)              | out_of_range   |
| missing_field    | no temperature (a required field)                                | missing_field  |
| device_mismatch  | device_id of another device than the topic's                     | device_mismatch|
| too_large        | a valid reading padded with a string to more than 256 KiB        | too_large      |
| nan              | temperature as the bare token NaN (invalid JSON)                 | malformed_json |

In a batch (a JSON array), element-level kinds (wrong_type, out_of_range, missing_field,
device_mismatch) spoil only the first element, so the gateway stores the other K - 1
readings and rejects one; the other kinds spoil the whole message.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Final, Literal

import orjson

FaultKind = Literal[
    "malformed_json", "wrong_type", "out_of_range", "missing_field", "device_mismatch", "too_large", "nan"
]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = (
    "malformed_json",
    "wrong_type",
    "out_of_range",
    "missing_field",
    "device_mismatch",
    "too_large",
    "nan",
)
EXPECTED_REJECT: Final[dict[FaultKind, str]] = {
    "malformed_json": "malformed_json",
    "wrong_type": "wrong_type",
    "out_of_range": "out_of_range",
    "missing_field": "missing_field",
    "device_mismatch": "device_mismatch",
    "too_large": "too_large",
    "nan": "malformed_json",
}
ELEMENT_KINDS: Final[frozenset[FaultKind]] = frozenset(
    {"wrong_type", "out_of_range", "missing_field", "device_mismatch"}
)
OVERSIZE_BYTES: Final = 256 * 1024 + 1024
_NAN_MARK = "\x00nan\x00"
_NAN_JSON = orjson.dumps(_NAN_MARK)


class FaultPlan:
    """Decides, from a message's fleet index alone, whether it is bad and of which kind."""

    def __init__(self, ratio: float, kinds: tuple[FaultKind, ...] = FAULT_KINDS) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"bad ratio must be within 0..1, got {ratio}")
        if not kinds:
            raise ValueError("at least one fault kind is needed")
        exact = Fraction(ratio).limit_denominator(1_000_000)
        self._p = exact.numerator
        self._q = exact.denominator
        self.kinds = kinds

    def kind_for(self, index: int) -> FaultKind | None:
        """The fault of message `index`, or None for a valid message."""
        if self._p == 0:
            return None
        before = index * self._p // self._q
        if (index + 1) * self._p // self._q == before:
            return None
        return self.kinds[before % len(self.kinds)]

    def bad_before(self, index: int) -> int:
        """How many of the messages 0 .. index-1 are bad."""
        return index * self._p // self._q

    def occurrence(self, index: int) -> int:
        """For a bad message: how many bad messages of its kind came before it."""
        return self.bad_before(index) // len(self.kinds)


def render(readings: list[dict[str, Any]], batch: bool, fault: FaultKind | None, other_device: str, nth: int) -> bytes:
    """The payload for `readings` (one object, or an array when `batch`), spoiled by `fault`.

    `readings` may be modified. `other_device` is the id used by device_mismatch; `nth`
    (the occurrence of this kind) alternates the field that out_of_range spoils.
    """
    first = readings[0]
    if fault == "wrong_type":
        first["temperature"] = str(first["temperature"])
    elif fault == "out_of_range":
        if nth % 2 == 1 and "humidity" in first:
            first["humidity"] = -5.0
        else:
            first["temperature"] = 150.5
    elif fault == "missing_field":
        del first["temperature"]
    elif fault == "device_mismatch":
        first["device_id"] = other_device
    elif fault == "nan":
        first["temperature"] = _NAN_MARK
    body: object = readings if batch else first
    payload = orjson.dumps(body)
    if fault == "nan":
        return payload.replace(_NAN_JSON, b"NaN", 1)
    if fault == "malformed_json":
        return payload[: max(1, len(payload) // 2)]
    if fault == "too_large":
        first["padding"] = ""
        room = OVERSIZE_BYTES - len(orjson.dumps(body))
        first["padding"] = "x" * max(room, 1)
        return orjson.dumps(body)
    return payload
