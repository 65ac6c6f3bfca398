"""What every sink's config has in common, and where file-based sinks keep their files.

Each sink's own config model (next to the sink) subclasses `SinkConfigBase` and adds a
`type: Literal[...]` discriminator and its own keys; the root settings combine them in a
discriminated union on `type`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.runner_config import RunnerConfig


class SinkConfigBase(BaseModel):
    """`name` identifies the sink (metrics, logs, readiness); `subscription` is the bus
    subscription it consumes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="The sink's name, as used in metrics, logs and /readyz.")
    subscription: str = Field(min_length=1, description="The bus subscription this sink consumes.")
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig,
        description="How the shared runner drives this sink: in-flight writes, retry pacing.",
    )


def resolve_data_path(path: str | None, data_dir: Path, default_name: str) -> Path:
    """`path` made absolute: None means `<data_dir>/<default_name>`; a relative path is
    relative to `data_dir`; `~` is expanded. Does no I/O."""
    if path is None:
        return data_dir / default_name
    p = Path(path).expanduser()
    return p if p.is_absolute() else data_dir / p
