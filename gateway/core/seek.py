"""Seeking a subscription to a time (like Pub/Sub's seek): the result, the refusal, the time syntax.

`seek(subscription, time_ns)` on a bus makes the retained messages of the subscription's
topic published at or after `time_ns` unacked for that subscription (delivered again) and
every earlier one acked. Only the durable bus can do it (`gateway.bus.sqlite`, which keeps
acked messages for `bus.sqlite.retention`); the memory bus raises `SeekUnsupported`.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

_RELATIVE = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class SeekUnsupported(Exception):
    """The bus cannot seek (the memory bus keeps no acked messages)."""


@dataclass(frozen=True, slots=True)
class SeekResult:
    """What a seek did to one subscription.

    `redeliver`: messages the subscription holds after the seek (published at or after the
    time, still retained): all of them are delivered (again). `skipped`: messages it held
    before the seek that are now acked (published before the time). `oldest_retained_ns`:
    publish time of the oldest message of the topic still stored (None: none is), so a time
    before it means retention already deleted part of what was asked for. `undecodable`:
    stored messages at or after the time that could not be read back (lost).
    """

    subscription: str
    time_ns: int
    redeliver: int
    skipped: int
    oldest_retained_ns: int | None
    undecodable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_seek_time(text: str, now_ns: int | None = None) -> int:
    """`now`, a duration back from now (`-2h`, `2h`, `90s`, `7d`), RFC 3339 with a timezone,
    or epoch seconds → epoch nanoseconds. Raises ValueError with the accepted forms."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    value = text.strip()
    if value.lower() == "now":
        return now_ns
    m = _RELATIVE.match(value)
    if m:
        if m.group(1) == "+":
            raise ValueError(f"seek time {text!r} is in the future; use now, -2h, or an RFC 3339 time")
        return now_ns - int(float(m.group(2)) * _UNIT_S[m.group(3)] * 1e9)
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use now, a duration back like -2h or 15m, RFC 3339 such as "
            "2026-11-26T10:00:00Z, or epoch seconds)"
        ) from None
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone; add Z or +00:00")
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000
