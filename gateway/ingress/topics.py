"""MQTT topic routing: which schema a topic's payload follows, and which tags its levels carry.

A route pattern is a `/`-separated list of levels. Each level is one of:

* a literal (`devices`), matched exactly;
* a named placeholder `{name}`, matching one non-empty level whose text becomes the tag
  `name` (a placeholder named `device_id` also supplies the reading's device id);
* `+`, matching one level (possibly empty) without capturing it;
* `#`, only as the last level, matching the rest of the topic, including nothing at all
  (`a/#` matches `a`, as in MQTT).

Guarantees: `TopicRouter.match` tries routes in configuration order and the first match
wins; it never raises for any topic string. Following MQTT, a topic beginning with `$`
(`$SYS/...`) is never matched by a pattern whose first level is a wildcard. Placeholders do
not match empty levels, so `devices//telemetry` matches no `devices/{device_id}/telemetry`
route even though the broker delivers it for the `devices/+/telemetry` subscription.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEVICE_ID_TAG = "device_id"


@dataclass(slots=True, frozen=True)
class Level:
    """One parsed pattern level. `text` is the literal text or the placeholder name."""

    kind: Literal["literal", "placeholder", "plus", "hash"]
    text: str = ""


def parse_pattern(pattern: str) -> list[Level]:
    """Parse a route pattern; raises ValueError with a message naming the bad level."""
    if not pattern:
        raise ValueError("pattern is empty")
    levels = pattern.split("/")
    parsed: list[Level] = []
    seen: set[str] = set()
    for index, level in enumerate(levels):
        where = f"level {index + 1} ({level!r}) of pattern {pattern!r}"
        if level == "":
            raise ValueError(f"{where} is empty; patterns may not start or end with '/' or contain '//'")
        if level == "+":
            parsed.append(Level("plus"))
        elif level == "#":
            if index != len(levels) - 1:
                raise ValueError(f"{where}: '#' is only allowed as the last level")
            parsed.append(Level("hash"))
        elif "+" in level or "#" in level:
            raise ValueError(f"{where}: '+' and '#' must fill a whole level")
        elif level.startswith("{") and level.endswith("}") and level.count("{") == 1 and level.count("}") == 1:
            name = level[1:-1]
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"{where}: placeholder name {name!r} must start with a letter or '_' and contain only "
                    "ASCII letters, digits and '_'"
                )
            if name in seen:
                raise ValueError(f"{where}: placeholder {{{name}}} appears more than once")
            seen.add(name)
            parsed.append(Level("placeholder", name))
        elif "{" in level or "}" in level:
            raise ValueError(f"{where}: a placeholder must fill a whole level, written as {{name}}")
        else:
            parsed.append(Level("literal", level))
    return parsed


class RouteConfig(BaseModel):
    """One topic route: a pattern, the schema its payloads follow, and static tags.

    The schema is named with the YAML key `schema` (the Python attribute is `schema_name`).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pattern: str = Field(description="Topic pattern, e.g. 'sites/{site}/devices/{device_id}/telemetry'.")
    schema_name: str = Field(alias="schema", min_length=1, description="Name of a schema under `schemas`.")
    tags: dict[str, str] = Field(default_factory=dict, description="Static tags added to every reading of this route.")

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        parse_pattern(value)
        return value

    @model_validator(mode="after")
    def _check_tags(self) -> RouteConfig:
        names = set(self.placeholders)
        for key, tag_value in self.tags.items():
            if key == DEVICE_ID_TAG:
                raise ValueError("static tag 'device_id' is not allowed: the device id comes from the topic or payload")
            if key in names:
                raise ValueError(f"static tag {key!r} clashes with placeholder {{{key}}} in pattern {self.pattern!r}")
            if not key or not tag_value:
                raise ValueError(f"static tag {key!r}: keys and values must be non-empty")
        return self

    @property
    def placeholders(self) -> list[str]:
        """Names of the placeholders, in pattern order."""
        return [level.text for level in parse_pattern(self.pattern) if level.kind == "placeholder"]

    @property
    def subscription_filter(self) -> str:
        """The MQTT subscription filter for this pattern: placeholders become `+`."""
        out = {"literal": None, "placeholder": "+", "plus": "+", "hash": "#"}
        return "/".join(out[level.kind] or level.text for level in parse_pattern(self.pattern))


@dataclass(slots=True, frozen=True)
class _Compiled:
    route: RouteConfig
    regex: re.Pattern[str]
    min_levels: int
    exact_levels: int | None  # None when the pattern ends in '#'


def _compile(route: RouteConfig) -> _Compiled:
    parsed = parse_pattern(route.pattern)
    hash_tail = parsed[-1].kind == "hash"
    fixed = parsed[:-1] if hash_tail else parsed
    parts: list[str] = []
    for level in fixed:
        if level.kind == "literal":
            parts.append(re.escape(level.text))
        elif level.kind == "placeholder":
            parts.append(f"(?P<{level.text}>[^/]+)")
        else:
            parts.append("[^/]*")
    body = "/".join(parts)
    if hash_tail:
        body = f"{body}(?:/.*)?" if body else ".*"
    if parsed[0].kind != "literal":
        body = r"(?!\$)" + body
    exact = None if hash_tail else len(parsed)
    return _Compiled(route, re.compile(body, re.DOTALL), max(len(fixed), 1), exact)


class TopicRouter:
    """Matches topics to routes; built once at startup, used for every message.

    Routes are bucketed by level count so that a match costs one `str.count` plus one
    regex `fullmatch` per candidate route of that depth.
    """

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._routes = list(routes)
        compiled = [_compile(r) for r in self._routes]
        deepest = max((c.exact_levels or c.min_levels for c in compiled), default=0)
        self._by_levels: dict[int, list[_Compiled]] = {
            n: [c for c in compiled if c.min_levels <= n and c.exact_levels in (None, n)] for n in range(1, deepest + 1)
        }
        self._deeper: list[_Compiled] = [c for c in compiled if c.exact_levels is None]

    @property
    def routes(self) -> list[RouteConfig]:
        """The routes in matching order (a copy)."""
        return list(self._routes)

    def match(self, topic: str) -> tuple[RouteConfig, dict[str, str]] | None:
        """The first route matching `topic` and its placeholder values, or None."""
        for compiled in self._by_levels.get(topic.count("/") + 1, self._deeper):
            found = compiled.regex.fullmatch(topic)
            if found is not None:
                return compiled.route, found.groupdict()
        return None

    def subscription_filters(self) -> list[str]:
        """MQTT filters covering every route, without duplicates, in route order."""
        return list(dict.fromkeys(r.subscription_filter for r in self._routes))
