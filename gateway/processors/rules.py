"""Alert rules as the operator writes them (the `alerts.rules` section).

Three kinds, chosen by `type`:

* `threshold`: `field` compared with `op` (`>`, `<`, `between`) against `value` (or
  `low`/`high`). Hysteresis: a firing alert resolves only once the value passes the clearing
  threshold `clear` (for `>`: at or below it; for `<`: at or above it; for `between`: below
  `clear_low` or above `clear_high`). Defaults: the firing threshold itself.
* `rate`: the change per second of `field` over `window` (first and last reading in the
  window, by reading time), compared like a threshold (`>` or `<`, `value`, `clear`).
* `absence`: a device silent for `after` (wall clock since its last reading) fires
  ("offline"); its next reading resolves it ("back online").

`for` (threshold and rate): the condition must hold in every reading for this long, in
reading time, before the alert fires; a reading that does not breach resets it.
`select` restricts a rule to readings by device id, measurement and tags (glob patterns;
each key must match one of its patterns; an empty selector takes every reading).
"""

from __future__ import annotations

import fnmatch
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.duration import Duration
from gateway.core.message import Reading

SUMMARY_VARS = frozenset({"rule", "device_id", "severity", "status", "field", "value", "threshold", "tags"})


class Selector(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: list[str] = Field(default_factory=list, description="Glob patterns, e.g. ['sensor-*'].")
    measurement: list[str] = Field(default_factory=list, description="Glob patterns of measurements.")
    tags: dict[str, list[str]] = Field(default_factory=dict, description="Tag -> glob patterns, e.g. {site: [lab]}.")

    def matches(self, r: Reading) -> bool:
        if self.device_id and not any(fnmatch.fnmatchcase(r.device_id, p) for p in self.device_id):
            return False
        if self.measurement and not any(fnmatch.fnmatchcase(r.measurement, p) for p in self.measurement):
            return False
        for tag, patterns in self.tags.items():
            value = r.device_id if tag == "device_id" else r.tags.get(tag)
            if value is None or not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                return False
        return True


class RuleBase(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    select: Selector = Field(default_factory=Selector)
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] = Field(default_factory=dict, description="Static labels sent with every event.")
    summary: str = Field(
        "{rule}: {device_id} {field}={value} (threshold {threshold})",
        description="Template; names: rule, device_id, severity, status, field, value, threshold, tags[NAME].",
    )

    @field_validator("summary")
    @classmethod
    def _check_summary(cls, template: str) -> str:
        import string

        try:
            names = [n for _, n, _, _ in string.Formatter().parse(template) if n is not None]
        except ValueError as exc:
            raise ValueError(f"summary template is malformed: {exc}") from None
        for name in names:
            base = name.split("[", 1)[0].split(".", 1)[0]
            if base not in SUMMARY_VARS:
                raise ValueError(f"summary uses unknown name {{{name}}}; allowed: {sorted(SUMMARY_VARS)}")
        return template


class _Comparison(RuleBase):
    field: str = Field(min_length=1, description="The reading field compared.")
    op: Literal[">", "<", "between"]
    value: float | None = Field(None, description="Firing threshold of > and <.")
    clear: float | None = Field(None, description="Clearing threshold of > and < (hysteresis); default: value.")
    low: float | None = None
    high: float | None = None
    clear_low: float | None = None
    clear_high: float | None = None
    for_: Duration = Field(timedelta(0), alias="for", description="How long the condition must hold before firing.")

    @model_validator(mode="after")
    def _check_thresholds(self) -> _Comparison:
        if self.op in (">", "<"):
            if self.value is None:
                raise ValueError(f"op {self.op!r} needs a value")
            if self.low is not None or self.high is not None:
                raise ValueError(f"low/high belong to op 'between', not {self.op!r}")
            clear = self.value if self.clear is None else self.clear
            if (self.op == ">" and clear > self.value) or (self.op == "<" and clear < self.value):
                side = "at or below" if self.op == ">" else "at or above"
                raise ValueError(f"clear ({clear}) must be {side} value ({self.value}) for op {self.op!r}")
        else:
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError("op 'between' needs low <= high")
            if self.value is not None or self.clear is not None:
                raise ValueError("op 'between' takes low/high and clear_low/clear_high, not value/clear")
            if (self.clear_low is not None and self.clear_low > self.low) or (
                self.clear_high is not None and self.clear_high < self.high
            ):
                raise ValueError("clear_low must be <= low and clear_high >= high (the clearing band is wider)")
        return self

    def breaches(self, v: float) -> bool:
        if self.op == ">":
            return v > self.value  # type: ignore[operator]
        if self.op == "<":
            return v < self.value  # type: ignore[operator]
        return self.low <= v <= self.high  # type: ignore[operator]

    def clears(self, v: float) -> bool:
        if self.op == ">":
            return v <= (self.value if self.clear is None else self.clear)  # type: ignore[operator]
        if self.op == "<":
            return v >= (self.value if self.clear is None else self.clear)  # type: ignore[operator]
        lo = self.low if self.clear_low is None else self.clear_low
        hi = self.high if self.clear_high is None else self.clear_high
        return v < lo or v > hi  # type: ignore[operator]

    def threshold_text(self) -> str:
        return f"{self.op} {self.value:g}" if self.value is not None else f"between {self.low:g} and {self.high:g}"


class ThresholdRule(_Comparison):
    type: Literal["threshold"] = "threshold"


class RateRule(_Comparison):
    type: Literal["rate"] = "rate"
    window: Duration = Field(description="Rate of change over this much reading time (per second).")
    op: Literal[">", "<"]

    @field_validator("window")
    @classmethod
    def _positive(cls, w: timedelta) -> timedelta:
        if w <= timedelta(0):
            raise ValueError("window must be positive")
        return w


class AbsenceRule(RuleBase):
    type: Literal["absence"] = "absence"
    after: Duration = Field(description="Silence after which a device is offline.")
    summary: str = "{device_id} is offline (silent for {threshold})"

    @field_validator("after")
    @classmethod
    def _positive(cls, w: timedelta) -> timedelta:
        if w <= timedelta(0):
            raise ValueError("after must be positive")
        return w


AlertRule = Annotated[ThresholdRule | RateRule | AbsenceRule, Field(discriminator="type")]
