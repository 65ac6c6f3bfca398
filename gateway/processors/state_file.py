"""Small JSON state files of the processors (alert state, change-detector baselines).

* `write_atomic`: the document is written to a temporary file in the same folder, fsynced,
  then renamed over the old one (`os.replace`), so a reader (or the next start after a
  crash) sees the previous or the next state, never a torn one.
* `read_doc`: the document, None if the file does not exist, ValueError if it is not a
  JSON object.
* `load_or_ignore`: for loading at start: a missing file is None; a corrupt one is logged,
  moved aside to `<name>.corrupt` (kept for a look, overwritten by the next corrupt one) and
  ignored, so a damaged state file never keeps the gateway from starting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

log = logging.getLogger(__name__)
T = TypeVar("T")


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_doc(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None if there is no such file. Raises ValueError if unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} does not hold a JSON object but a {type(doc).__name__}")
    return doc


def load_or_ignore(path: Path, what: str, parse: Callable[[dict[str, Any]], T]) -> T | None:
    """`parse(read_doc(path))`; None if there is no file. A file that cannot be read or parsed
    (`parse` raising ValueError, KeyError, TypeError or AttributeError) is logged, moved aside
    and ignored (None)."""
    try:
        doc = read_doc(path)
        return None if doc is None else parse(doc)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.replace(aside)
        except OSError:
            aside = path
        log.error("%s: state file %s unreadable, ignored (starting without it): %r", what, path, exc,
                  extra={"state_file": str(path), "moved_to": str(aside)})  # fmt: skip
        return None
