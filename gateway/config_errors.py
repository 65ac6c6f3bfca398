"""Turning config problems into messages an operator can act on.

Every message names the file (and line, when the key is in the file), the key path in
dotted form (`sinks.tsdb.url`), or the environment variable that set it, and what was
expected. Secret values are never echoed: only non-secret scalar inputs are quoted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

ENV_PREFIX = "GATEWAY_"
_SECRET_WORDS = ("password", "token", "secret", "key")


class ConfigError(Exception):
    """A config that cannot be used. `str()` is the full, multi-line operator message."""

    def __init__(self, path: Path | None, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        where = str(path) if path is not None else "configuration"
        lines = [f"{where}: {len(self.problems)} problem(s):"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def load_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Read a YAML mapping and the line number of every key path in it.

    Raises `ConfigError` for a missing file, unreadable YAML (with its line and column), or
    a document that is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [f"file not found (looked in {path.resolve()})"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(path, [f"{where}not valid YAML: {exc.problem}"]) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            path, [f"the file must be a mapping of sections (ingress:, sinks:, ...), not a {type(data).__name__}"]
        )
    lines: dict[tuple[str, ...], int] = {}
    _collect_lines(node, (), lines)
    return data, lines


def _collect_lines(node: yaml.Node | None, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            out[key] = item.start_mark.line + 1
            _collect_lines(item, key, out)


def _clean_loc(loc: Sequence[int | str], data: Any) -> tuple[str, ...]:
    """Drop the discriminator tags pydantic inserts into locations of tagged unions."""
    out: list[str] = []
    cur = data
    for part in loc:
        if isinstance(cur, Mapping):
            if part in cur:
                cur = cur[part]
                out.append(str(part))
                continue
            if cur.get("type") == part or (isinstance(part, str) and "[" in part):
                continue  # union tag, e.g. ('ingress', 'client', 'host') -> ingress.host
            out.append(str(part))
            cur = None
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
            out.append(str(part))
        else:
            out.append(str(part))
            cur = None
    return tuple(out)


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def _is_secret(path: tuple[str, ...]) -> bool:
    return any(word in path[-1].lower() for word in _SECRET_WORDS) if path else False


def _describe(err: Mapping[str, Any], path: tuple[str, ...]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    inp = err.get("input")
    if kind == "extra_forbidden":
        return "unknown key (check its spelling and the section it is in; see gateway check-config --help)"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return f"unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"a 'type' key is required here; {msg}"
    shown = ""
    if not _is_secret(path) and isinstance(inp, str | int | float | bool) and repr(inp) not in msg:
        shown = f" (got {inp!r})"
    return f"{msg}{shown}"


def format_validation_error(
    exc: ValidationError, path: Path | None, data: Mapping[str, Any], lines: Mapping[tuple[str, ...], int]
) -> ConfigError:
    """One line per problem: `line N: key.path: what is wrong`, or the env var that set it."""
    problems: list[str] = []
    for err in exc.errors():
        key = _clean_loc(err.get("loc", ()), data)
        dotted = ".".join(key) if key else "(top level)"
        env = _env_name(key) if key else ""
        if env and env in os.environ:
            where = f"environment variable {env}: "
        elif key in lines:
            where = f"line {lines[key]}: "
        elif key[:-1] in lines:
            where = f"line {lines[key[:-1]]}: "
        else:
            where = ""
        problems.append(f"{where}{dotted}: {_describe(err, key)}")
    return ConfigError(path, problems)
