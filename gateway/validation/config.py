"""Configuration of payload validation: schemas (what a payload must contain) and limits.

These models only describe; `gateway.validation.schema` compiles a `SchemaConfig` into a
fast validator and `gateway.validation.decode` applies it to messages.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from gateway.core.duration import Duration
from gateway.ingress.topics import DEVICE_ID_TAG

FieldType = Literal["float", "int", "bool", "string"]


class FieldSpec(BaseModel):
    """One payload field.

    `int` fields take JSON integers only (not 3.0, "3" or true) within the signed 64-bit
    range; `float` fields take any finite JSON number (integers become floats); `bool`
    fields take true/false only; `string` fields take strings only. JSON `null` is not a
    value of any type: omit an optional field instead. A `tag` field (strings only, not
    empty) becomes a tag of the reading instead of a field.
    """

    model_config = ConfigDict(extra="forbid")

    type: FieldType
    unit: str | None = None
    min: float | None = Field(default=None, description="Smallest allowed value (inclusive), numeric types only.")
    max: float | None = Field(default=None, description="Largest allowed value (inclusive), numeric types only.")
    required: bool = False
    tag: bool = Field(default=False, description="Store the value as a tag instead of a field (string fields only).")
    description: str | None = None

    @model_validator(mode="after")
    def _check(self) -> FieldSpec:
        if (self.min is not None or self.max is not None) and self.type not in ("float", "int"):
            raise ValueError(f"min/max are only allowed for float and int fields, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.tag and self.type != "string":
            raise ValueError(f"tag fields must be of type string, not {self.type}")
        return self


class SchemaConfig(BaseModel):
    """The shape of one kind of payload, and the measurement its readings go to.

    `device_id_field` and `timestamp_field` name payload keys that are read by the decoder
    itself (they are optional in the payload and must not be listed under `fields`).
    """

    model_config = ConfigDict(extra="forbid")

    measurement: str = Field(min_length=1)
    device_id_field: str = Field(default="device_id", min_length=1)
    timestamp_field: str = Field(default="ts", min_length=1)
    unknown_fields: Literal["ignore", "reject"] = Field(
        default="ignore", description="What to do with payload keys not listed in `fields`."
    )
    fields: dict[str, FieldSpec]

    @model_validator(mode="after")
    def _check(self) -> SchemaConfig:
        if self.device_id_field == self.timestamp_field:
            raise ValueError(f"device_id_field and timestamp_field are both {self.device_id_field!r}")
        for reserved in (self.device_id_field, self.timestamp_field):
            if reserved in self.fields:
                raise ValueError(f"field {reserved!r} is read by the decoder itself; remove it from `fields`")
        for name, spec in self.fields.items():
            if not name:
                raise ValueError("field names must be non-empty")
            if spec.tag and name == DEVICE_ID_TAG:
                raise ValueError("tag field 'device_id' is not allowed: the device id has its own tag")
        if all(spec.tag for spec in self.fields.values()):
            raise ValueError("a schema needs at least one non-tag field")
        return self


class ValidationConfig(BaseModel):
    """Limits applied to every message before and after schema validation."""

    model_config = ConfigDict(extra="forbid")

    max_payload_bytes: PositiveInt = 262_144
    max_future_skew: Duration = Field(
        default=timedelta(minutes=5), description="Refuse timestamps further ahead than this."
    )
    max_past_skew: Duration = Field(default=timedelta(days=30), description="Refuse timestamps older than this.")
    max_readings_per_message: PositiveInt = 1000

    @model_validator(mode="after")
    def _check(self) -> ValidationConfig:
        if self.max_future_skew < timedelta(0) or self.max_past_skew < timedelta(0):
            raise ValueError("max_future_skew and max_past_skew must not be negative")
        return self
