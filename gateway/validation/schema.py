"""Compile a `SchemaConfig` into a fast validator of one payload object.

Compilation happens once, at startup: each schema becomes a pydantic `TypeAdapter` over a
`TypedDict` whose keys are the payload keys (any string, not only identifiers), with strict
types and range constraints. Validating an element is then a single call into
pydantic-core; nothing is created per message except the output dicts.

Guarantees of `CompiledSchema.check`: it returns only values of the declared types (floats
as `float` even when the JSON had an integer, finite, within min/max; ints within the
signed 64-bit range), or raises `ElementError` with a reject code and a reason that names
the field. The device id and timestamp keys are left to the caller.

For the decoder's fast path (`gateway.validation.fastpath`) a schema also carries
`validate_values`: the same annotations over the value (non-tag) fields alone, unknown keys
ignored, whose result is exactly the `fields` dict that `check` returns for an element
`check` accepts (same keys, values and order); it raises `ValidationError` on what it refuses.
`validate_value_list` is the same over a list of elements, in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, NotRequired, Required

import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict

from gateway.core.message import INT64_MAX, INT64_MIN, FieldValue
from gateway.validation.config import FieldSpec, SchemaConfig

MAX_ERRORS_SHOWN = 3

RejectCode = Literal[
    "too_large",
    "no_route",
    "malformed_json",
    "not_object",
    "empty_batch",
    "too_many_readings",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "not_finite",
    "unknown_field",
    "device_mismatch",
    "tag_mismatch",
    "missing_device_id",
    "bad_timestamp",
    "clock_skew",
    "internal_error",
]

_CODES: dict[str, RejectCode] = {
    "missing": "missing_field",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "string_too_short": "out_of_range",
    "finite_number": "not_finite",
    "extra_forbidden": "unknown_field",
}

# The functional TypedDict form with a computed key set; called through a plain callable
# because type checkers only accept dictionary literals there.
_make_typed_dict: Any = TypedDict


class ElementError(Exception):
    """One payload element failed validation: `code` is a RejectCode, `reason` the words for it."""

    def __init__(self, code: RejectCode, reason: str) -> None:
        super().__init__(reason)
        self.code: RejectCode = code
        self.reason = reason


def json_kind(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def show(value: object, limit: int = 60) -> str:
    """A payload value as JSON text (Python repr for what JSON cannot show), cut to `limit`."""
    if isinstance(value, float) and not math.isfinite(value):
        text = repr(value)
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: object) -> str:
    """'<json kind> <value>' for messages, e.g. 'string "3"', or just 'null'."""
    return "null" if value is None else f"{json_kind(value)} {show(value)}"


def _annotation(name: str, spec: FieldSpec) -> Any:
    if spec.type == "float":
        return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=spec.min, le=spec.max)]
    if spec.type == "int":
        low = INT64_MIN if spec.min is None else max(INT64_MIN, math.ceil(spec.min))
        high = INT64_MAX if spec.max is None else min(INT64_MAX, math.floor(spec.max))
        if low > high:
            raise ValueError(f"int field {name!r}: no integer lies between min {spec.min} and max {spec.max}")
        return Annotated[int, Field(strict=True, ge=low, le=high)]
    if spec.type == "bool":
        return Annotated[bool, Field(strict=True)]
    return Annotated[str, Field(strict=True, min_length=1 if spec.tag else None)]


class CompiledSchema:
    """A validator for the objects of one schema; built once, used for every element."""

    def __init__(self, name: str, config: SchemaConfig) -> None:
        self.name = name
        self.config = config
        self.measurement = config.measurement
        self.device_id_field = config.device_id_field
        self.timestamp_field = config.timestamp_field
        self.value_fields = frozenset(n for n, s in config.fields.items() if not s.tag)
        self.tag_fields = frozenset(n for n, s in config.fields.items() if s.tag)
        self.tag_names = tuple(n for n, s in config.fields.items() if s.tag)
        self.required_tags = frozenset(n for n, s in config.fields.items() if s.tag and s.required)
        self.rejects_unknown = config.unknown_fields == "reject"
        self.known_keys = frozenset((*config.fields, config.device_id_field, config.timestamp_field))
        keys: dict[str, Any] = {}
        for field_name, spec in config.fields.items():
            wrapper = Required if spec.required else NotRequired
            keys[field_name] = wrapper[_annotation(field_name, spec)]
        values = {k: v for k, v in keys.items() if k in self.value_fields}
        keys[config.device_id_field] = NotRequired[Any]
        keys[config.timestamp_field] = NotRequired[Any]
        shape = _make_typed_dict(f"Schema_{name}", keys, total=False)
        shape.__pydantic_config__ = ConfigDict(extra="forbid" if self.rejects_unknown else "ignore")
        self._validate: Callable[[object], Any] = TypeAdapter(shape).validate_python
        value_shape = _make_typed_dict(f"Values_{name}", values, total=False)
        value_shape.__pydantic_config__ = ConfigDict(extra="ignore")
        # The core validator itself: skipping TypeAdapter's Python wrapper saves a call per element.
        self.validate_values: Callable[[object], dict[str, FieldValue]] = TypeAdapter(
            value_shape
        ).validator.validate_python
        # The same over a list of elements, in one call (the decoder's batch fast path).
        self.validate_value_list: Callable[[object], list[dict[str, FieldValue]]] = TypeAdapter(
            list[value_shape]  # type: ignore[valid-type]
        ).validator.validate_python

    def check(self, element: dict[str, Any]) -> tuple[dict[str, FieldValue], dict[str, str]]:
        """The element's (fields, tag-field values); raises `ElementError` if it is invalid."""
        try:
            valid: dict[str, Any] = self._validate(element)
        except ValidationError as exc:
            raise self._translate(exc.errors(include_url=False)) from None
        fields: dict[str, FieldValue] = {}
        tags: dict[str, str] = {}
        for key, value in valid.items():
            if key in self.value_fields:
                fields[key] = value
            elif key in self.tag_fields:
                tags[key] = value
        if not fields:
            names = ", ".join(repr(n) for n in sorted(self.value_fields))
            raise ElementError("missing_field", f"no measured value: none of the fields {names} is present")
        return fields, tags

    def _translate(self, errors: list[ErrorDetails]) -> ElementError:
        code = _CODES.get(errors[0]["type"], "wrong_type")
        parts = [self._describe(error) for error in errors[:MAX_ERRORS_SHOWN]]
        if len(errors) > MAX_ERRORS_SHOWN:
            parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more errors")
        return ElementError(code, "; ".join(parts))

    def _describe(self, error: ErrorDetails) -> str:
        kind = error["type"]
        name = ".".join(str(part) for part in error["loc"]) or "?"
        value = error.get("input")
        ctx = error.get("ctx") or {}
        if kind == "missing":
            return f"field {name!r} is required but missing"
        if kind == "extra_forbidden":
            return f"field {name!r} is not in schema {self.name!r} (unknown_fields: reject)"
        if kind == "greater_than_equal":
            return f"field {name!r}: {show(value)} is below min {ctx.get('ge')}"
        if kind == "less_than_equal":
            return f"field {name!r}: {show(value)} is above max {ctx.get('le')}"
        if kind == "string_too_short":
            return f"field {name!r}: an empty string is not allowed for a tag"
        if kind == "finite_number":
            return f"field {name!r}: {show(value)} is not a finite number"
        spec = self.config.fields.get(name)
        if spec is not None and kind.endswith(("_type", "_parsing", "_from_float")):
            return f"field {name!r}: expected {spec.type}, got {describe(value)}"
        return f"field {name!r}: {error['msg']}"
