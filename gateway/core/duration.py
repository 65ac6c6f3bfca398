"""`Duration`: the one type for every duration in the operator's config.

Accepts `250ms`, `30s`, `5m`, `2h`, `1d`, `1h30m`, `1.5s`, a number of seconds, or what
pydantic accepts for `timedelta` (ISO 8601 `PT5M`, `HH:MM:SS`). Negative values are refused.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|s|m|h|d|w)")
_UNIT_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: Any) -> Any:
    """Turn `5m`-style text into a timedelta; leave anything else for pydantic to judge."""
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text and _PART.sub("", text) == "" and _PART.match(text):
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
            return timedelta(seconds=seconds)
        if not text.upper().startswith("P") and ":" not in text:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"not a duration: {value!r} (write e.g. 250ms, 30s, 5m, 2h, 1d)") from None
    if (
        isinstance(value, timedelta | int | float)
        and (value.total_seconds() if isinstance(value, timedelta) else value) < 0
    ):
        raise ValueError("a duration cannot be negative")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def format_duration(value: timedelta) -> str:
    """The shortest spelling `parse_duration` reads back: 1d, 90s, 250ms, 0s."""
    us = round(value.total_seconds() * 1_000_000)
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1000)):
        if us and us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us" if us else "0s"
