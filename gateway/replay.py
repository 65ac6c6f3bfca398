"""Dead-letter replay: inject dead letters again through the gateway's decode/validate path.

Runs inside the gateway (`POST /deadletters/replay`, `gateway.replay_routes`), once the
cause of the refusals is fixed (schema or routes changed, gateway restarted). For each dead
letter of the dead-letter file and its rotated files, oldest first, that matches the filters
and was not replayed before, a `RawMessage` is rebuilt (topic, payload decoded from base64
where the file has it so, client id, original receive time) and handed to `Gateway.handle`:
exactly what the ingress does with a device's publish. A message that is refused again is
dead-lettered again (a new entry in the file).

* Only dead letters refused before the bus are replayable: sources `validation`, `security`
  and `metadata`. Those of subscriptions and sinks (`subscription:*`, `sink:*`) carry
  readings that were valid; they are counted as not replayable.
* What was replayed is remembered in `<dead-letter file>.replayed` (JSON, replaced
  atomically) by content: topic, payload, client id, receive time, code and reason. A
  second replay skips them, as well as duplicates in the file and the entries made by a
  replay that failed again for the same reason (it would fail the same way);
  `include_replayed` injects them anyway. Entries that left the rotated files are forgotten.
* The state is saved after every `SAVE_EVERY` injected messages and at the end: a gateway
  stopped during a replay injects at most that many again (at least once; readings are
  idempotent in the stores).
* The counts in the summary are those of the decoder for the message as it is now
  (`valid`, `refused_again` by code). The gateway's own checks before it (`security.*`:
  with a rate limit, replayed messages count against their device's bucket) may still
  refuse a message that decodes; the dead-letter file then has it with code `rate_limited`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.core.message import RawMessage
from gateway.sinks.deadletter_file import dead_letter_files
from gateway.validation.decode import DecodeResult

REPLAYABLE_SOURCES = frozenset({"validation", "security", "metadata"})
SAVE_EVERY = 500


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    code: str | None = None  # only dead letters with this reason code
    since_ns: int | None = None  # only those received at or after this time
    dry_run: bool = False
    include_replayed: bool = False


@dataclass(slots=True)
class ReplaySummary:
    file: str
    dry_run: bool
    matched: int = 0  # dead letters that pass the filters
    already_replayed: int = 0
    not_replayable: dict[str, int] = field(default_factory=dict)  # by source
    unreadable: int = 0  # matched records that cannot be rebuilt (no topic, bad base64)
    replayed: int = 0  # injected (or, dry run, that would be)
    valid: int = 0  # of those, messages that decode without a refusal now
    readings: int = 0  # readings they produce
    metadata: int = 0  # messages on metadata topics (handled by the change detector)
    refused_again: dict[str, int] = field(default_factory=dict)  # refusals by code

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Handle = Callable[[RawMessage], Awaitable[None]]
Preview = Callable[[RawMessage], DecodeResult | None]  # None: not decoded (a metadata topic)


def content_key(record: dict[str, Any]) -> str:
    """What identifies a dead letter across files, duplicates and rotations."""
    parts = [record.get(k) for k in ("topic", "payload", "payload_encoding", "client_id", "received_ns")]
    parts += [record.get("code"), record.get("reason")]
    return hashlib.blake2b(orjson.dumps(parts), digest_size=12).hexdigest()


def raw_message(record: dict[str, Any]) -> RawMessage:
    """The message as the ingress saw it. Raises ValueError when the record cannot give it back."""
    topic = record.get("topic")
    payload = record.get("payload")
    if not isinstance(topic, str) or not isinstance(payload, str):
        raise ValueError("record without topic or payload")
    if record.get("payload_encoding") == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"payload is not base64: {exc}") from None
    else:
        data = payload.encode()
    received = record.get("received_ns")
    client = record.get("client_id")
    return RawMessage(
        topic=topic,
        payload=data,
        qos=1,
        received_ns=int(received) if isinstance(received, int) else 0,
        client_id=client if isinstance(client, str) else None,
    )


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of the file and its rotated files, oldest first (torn lines skipped)."""
    out: list[dict[str, Any]] = []
    for file in dead_letter_files(path):
        with file.open("rb") as f:
            for line in f:
                with contextlib.suppress(orjson.JSONDecodeError):
                    record = orjson.loads(line)
                    if isinstance(record, dict):
                        out.append(record)
    return out


class ReplayState:
    """The content keys already replayed, in `<file>.replayed`."""

    def __init__(self, dead_letter_file: Path) -> None:
        self.path = dead_letter_file.with_name(dead_letter_file.name + ".replayed")
        self.keys: set[str] = set()

    def load(self) -> None:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"replay state {self.path} is unreadable: {exc} (move it aside to start afresh)") from None
        keys = data.get("replayed") if isinstance(data, dict) else None
        self.keys = {k for k in keys if isinstance(k, str)} if isinstance(keys, list) else set()

    def save(self, present: set[str]) -> None:
        """Write the keys still present in the files, atomically and durably."""
        self.keys &= present
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps({"version": 1, "replayed": sorted(self.keys)}))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)


class Replayer:
    """Replays from one dead-letter file; one replay at a time."""

    def __init__(self, dead_letter_file: Path, handle: Handle, preview: Preview) -> None:
        self.path = dead_letter_file
        self._handle = handle
        self._preview = preview
        self._lock = asyncio.Lock()

    async def replay(self, request: ReplayRequest) -> ReplaySummary:
        async with self._lock:
            return await self._replay(request)

    async def _replay(self, request: ReplayRequest) -> ReplaySummary:
        summary = ReplaySummary(file=str(self.path), dry_run=request.dry_run)
        state = ReplayState(self.path)
        await asyncio.to_thread(state.load)
        records = await asyncio.to_thread(read_records, self.path)
        present = {content_key(r) for r in records}
        not_replayable: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        unsaved = 0
        done: set[str] = set()  # replayed by this run: a duplicate later in the files is skipped
        for record in records:
            if request.code is not None and record.get("code") != request.code:
                continue
            received = record.get("received_ns")
            if request.since_ns is not None and not (isinstance(received, int) and received >= request.since_ns):
                continue
            summary.matched += 1
            source = str(record.get("source", ""))
            if source not in REPLAYABLE_SOURCES:
                not_replayable[source] += 1
                continue
            key = content_key(record)
            if key in done or (key in state.keys and not request.include_replayed):
                summary.already_replayed += 1
                continue
            done.add(key)
            try:
                raw = raw_message(record)
            except ValueError:
                summary.unreadable += 1
                continue
            self._count(raw, summary, refused)
            if request.dry_run:
                continue
            state.keys.add(key)
            await self._handle(raw)
            unsaved += 1
            if unsaved >= SAVE_EVERY:
                await asyncio.to_thread(state.save, present)
                unsaved = 0
        if not request.dry_run and (summary.replayed or state.path.exists()):
            await asyncio.to_thread(state.save, present)
        summary.not_replayable = dict(not_replayable)
        summary.refused_again = dict(refused)
        return summary

    def _count(self, raw: RawMessage, summary: ReplaySummary, refused: Counter[str]) -> None:
        summary.replayed += 1
        result = self._preview(raw)
        if result is None:
            summary.metadata += 1
            return
        summary.readings += len(result.readings)
        if not result.rejects:
            summary.valid += 1
        for rejection in result.rejects:
            refused[rejection.code] += 1
