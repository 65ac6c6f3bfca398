"""The dead-letter file: one JSON object per line (`DeadLetter.to_record()`), rotated by size.

Guarantees of `DeadLetterFileSink.write`: the whole batch is appended with one write, then
flushed and (with `fsync: true`, the default) fsynced before `accepted` is returned. An
item that is not a `DeadLetter` is wrapped with `dead_letter_for` (source `sink:<name>`), so
nothing is refused for its type. On `OSError` (disk full, unopenable path) the sink truncates
the file back to its length before the batch (best effort) and reports `retry` for all.
Not idempotent: a batch written again (after a lost ack) is appended again; readers must
tolerate duplicates.

Rotation: before a batch that would take the file past `max_bytes`, `<file>` becomes
`<file>.1`, `.1` becomes `.2`, ..., and `.<keep>` is deleted. A single batch larger than
`max_bytes` is written whole into a fresh file. All file work runs in a worker thread, one
call at a time per sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
from pydantic import Field, NonNegativeInt, PositiveInt

from gateway.core.message import DeadLetter, dead_letter_for
from gateway.core.sink import WriteResult
from gateway.sinks.blocking import BlockingSink
from gateway.sinks.config import SinkConfigBase, resolve_data_path


class DeadLetterFileConfig(SinkConfigBase):
    """A JSON-lines file of dead letters; `path` defaults to `<data_dir>/deadletter.jsonl`."""

    type: Literal["deadletter_file"] = "deadletter_file"
    path: str | None = Field(None, description="The file; relative paths are relative to the data directory.")
    fsync: bool = Field(True, description="fsync after each batch, so an acknowledged dead letter survives power loss.")
    max_bytes: PositiveInt = Field(100 * 1024 * 1024, description="Rotate the file before it grows past this size.")
    keep: NonNegativeInt = Field(5, description="Rotated files kept (<file>.1 is the newest); 0 keeps none.")


class DeadLetterFileSink(BlockingSink):
    """Appends dead letters to a JSON-lines file. See the module docstring for guarantees."""

    def __init__(self, config: DeadLetterFileConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self.path = resolve_data_path(config.path, data_dir, "deadletter.jsonl")
        self._file: BinaryIO | None = None
        self._lock = threading.Lock()  # held by the worker thread, so a cancelled await cannot release it early
        self._healthy = True

    async def start(self) -> None:
        """Open the file (creating its directory). Does not raise when it cannot be opened:
        the sink is unhealthy and each write retries opening."""
        try:
            await asyncio.to_thread(self._open_sync)
        except OSError:
            self._healthy = False

    def _open_sync(self) -> None:
        with self._lock:
            self._ensure_open()

    def _close_sync(self) -> None:
        with self._lock:
            f, self._file = self._file, None
            if f is not None:
                f.close()

    def _ensure_open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        return self._file

    def _encode(self, items: list[Any]) -> tuple[bytes, list[int], dict[int, str]]:
        lines: list[bytes] = []
        good: list[int] = []
        rejected: dict[int, str] = {}
        for i, item in enumerate(items):
            letter = item
            if not isinstance(letter, DeadLetter):
                letter = dead_letter_for(
                    item, f"{type(item).__name__} reached dead-letter sink {self.name!r}", f"sink:{self.name}"
                )
            try:
                lines.append(orjson.dumps(letter.to_record(), option=orjson.OPT_APPEND_NEWLINE))
            except (TypeError, ValueError, AttributeError) as exc:
                rejected[i] = f"dead letter cannot be serialised: {exc}"
            else:
                good.append(i)
        return b"".join(lines), good, rejected

    def _write_sync(self, items: list[Any]) -> WriteResult:
        data, good, rejected = self._encode(items)
        if not good:
            return WriteResult(rejected=rejected, reason="no serialisable dead letters")
        with self._lock:
            start: int | None = None
            try:
                f = self._ensure_open()
                start = f.tell()
                if start > 0 and start + len(data) > self.config.max_bytes:
                    f = self._rotate()
                    start = 0
                f.write(data)
                f.flush()
                if self.config.fsync:
                    os.fsync(f.fileno())
            except OSError as exc:
                self._undo(start)
                self._healthy = False
                return WriteResult(retry=good, rejected=rejected, reason=f"dead-letter file {self.path}: {exc}")
        self._healthy = True
        return WriteResult(accepted=good, rejected=rejected)

    def _undo(self, start: int | None) -> None:
        """Drop a partly written batch and the buffered rest of it; reopen on the next write."""
        f, self._file = self._file, None
        if f is None:
            return
        with contextlib.suppress(OSError):
            if start is not None:
                os.ftruncate(f.fileno(), start)
        with contextlib.suppress(OSError, ValueError):
            f.close()
        # close() may have flushed buffered bytes of the failed batch after the truncation.
        with contextlib.suppress(OSError):
            if start is not None and self.path.stat().st_size > start:
                os.truncate(self.path, start)

    def _rotate(self) -> BinaryIO:
        if self._file is not None:
            self._file.close()
            self._file = None
        keep = self.config.keep
        if keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            Path(f"{self.path}.{keep}").unlink(missing_ok=True)
            for n in range(keep - 1, 0, -1):
                older = Path(f"{self.path}.{n}")
                if older.exists():
                    older.rename(f"{self.path}.{n + 1}")
            self.path.rename(f"{self.path}.1")
        return self._ensure_open()


def dead_letter_files(path: Path) -> list[Path]:
    """`path` and its rotated files that exist, oldest first (`.N`, ..., `.1`, then `path`)."""
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]+)")
    rotated: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                rotated.append((int(m.group(1)), p))
    files = [p for _, p in sorted(rotated, reverse=True)]
    if path.exists():
        files.append(path)
    return files


def read_dead_letters(path: Path, limit: int | None = None, reason_contains: str | None = None) -> list[dict[str, Any]]:
    """Dead-letter records from `path` and its rotated files, oldest first.

    `reason_contains` keeps records whose reason contains it (case-insensitive); `limit`
    keeps the newest `limit` of those (still oldest first). Lines that are not JSON objects
    (a batch torn by a crash before its fsync) are skipped.
    """
    needle = reason_contains.lower() if reason_contains else None
    records: list[dict[str, Any]] = []
    for file in dead_letter_files(path):
        with file.open("rb") as f:
            for line in f:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(record, dict):
                    continue
                if needle is not None and needle not in str(record.get("reason", "")).lower():
                    continue
                records.append(record)
    if limit is not None:
        records = records[-limit:] if limit > 0 else []
    return records
