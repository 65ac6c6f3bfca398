"""The dead-letter file: records as written, wrapping of foreign items, rotation and
retention, failures as retry, and the reader used by `gateway deadletter list`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from gateway.core.message import DeadLetter, Reading
from gateway.sinks.deadletter_file import DeadLetterFileConfig, DeadLetterFileSink, read_dead_letters


def letter(i: int, reason: str = "bad temperature", payload: bytes = b'{"t": "hot"}') -> DeadLetter:
    return DeadLetter(
        topic=f"dev/{i}/telemetry",
        payload=payload,
        reason=reason,
        source="validation",
        received_ns=1_700_000_000_000_000_000 + i,
    )


def config(**kwargs: Any) -> DeadLetterFileConfig:
    return DeadLetterFileConfig(name="dlq", subscription="dlq", **kwargs)


def file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


async def open_sink(tmp_path: Path, **kwargs: Any) -> DeadLetterFileSink:
    sink = DeadLetterFileSink(config(**kwargs), tmp_path)
    await sink.start()
    return sink


def test_config_defaults_and_strictness(tmp_path: Path) -> None:
    cfg = config()
    assert (cfg.type, cfg.fsync, cfg.max_bytes, cfg.keep) == ("deadletter_file", True, 100 * 1024 * 1024, 5)
    assert DeadLetterFileSink(cfg, tmp_path / "d").path == tmp_path / "d" / "deadletter.jsonl"
    assert DeadLetterFileSink(config(path="x/dl.jsonl"), tmp_path).path == tmp_path / "x" / "dl.jsonl"
    assert not (tmp_path / "d").exists()
    with pytest.raises(ValidationError):
        config(max_bytes=0)
    with pytest.raises(ValidationError):
        config(rotate=True)


async def test_records_are_written_as_json_lines(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    letters = [letter(0), letter(1, payload=b"\xff\x00binary")]
    result = await sink.write(letters)
    assert result.accepted == [0, 1] and sink.healthy()
    lines = sink.path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [x.to_record() for x in letters]
    assert orjson.loads(lines[1])["payload_encoding"] == "base64"
    await sink.close()
    assert read_dead_letters(sink.path) == [x.to_record() for x in letters]


async def test_foreign_items_are_wrapped_not_refused(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    r = Reading("env", "d9", {"device_id": "d9"}, {"v": 1.5}, 5, received_ns=7)
    result = await sink.write([r, {"odd": "thing"}])
    await sink.close()
    assert result.accepted == [0, 1]
    first, second = read_dead_letters(sink.path)
    assert first["topic"] == "reading/env/d9" and first["source"] == "sink:dlq" and "Reading" in first["reason"]
    assert orjson.loads(first["payload"])["fields"] == {"v": 1.5}
    assert second["topic"] == "unknown" and "dict" in second["reason"]


async def test_a_letter_that_cannot_be_serialised_is_rejected_alone(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path)
    broken = letter(1)
    broken.payload = 12345  # type: ignore[assignment]
    result = await sink.write([letter(0), broken, letter(2)])
    await sink.close()
    assert result.accepted == [0, 2] and list(result.rejected) == [1]
    assert [r["topic"] for r in read_dead_letters(sink.path)] == ["dev/0/telemetry", "dev/2/telemetry"]


async def test_rewrites_append_duplicates(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path, fsync=False)
    await sink.write([letter(0)])
    await sink.write([letter(0)])
    await sink.close()
    assert len(read_dead_letters(sink.path)) == 2


async def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    one = len(orjson.dumps(letter(0).to_record())) + 1
    sink = await open_sink(tmp_path, max_bytes=3 * one, keep=2)
    for i in range(10):
        assert (await sink.write([letter(i)])).accepted == [0]
    await sink.close()
    sizes = file_sizes(tmp_path)
    assert sorted(sizes) == ["deadletter.jsonl", "deadletter.jsonl.1", "deadletter.jsonl.2"]
    assert all(size <= 3 * one for size in sizes.values())
    topics = [r["topic"] for r in read_dead_letters(sink.path)]
    assert topics == [f"dev/{i}/telemetry" for i in range(3, 10)]  # files of 3: [0-2] was dropped


async def test_a_batch_larger_than_max_bytes_is_written_whole(tmp_path: Path) -> None:
    sink = await open_sink(tmp_path, max_bytes=10, keep=1)
    assert (await sink.write([letter(0), letter(1)])).accepted == [0, 1]
    assert (await sink.write([letter(2)])).accepted == [0]
    await sink.close()
    assert [r["topic"][4] for r in read_dead_letters(sink.path)] == ["0", "1", "2"]
    assert len(read_dead_letters(Path(f"{sink.path}.1"))) == 2


async def test_unwritable_destination_means_retry_until_it_works(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    sink = await open_sink(tmp_path, path=str(blocker / "dl.jsonl"))
    assert not sink.healthy()
    result = await sink.write([letter(0), letter(1)])
    assert result.retry == [0, 1] and result.accepted == [] and "blocker" in result.reason
    blocker.unlink()
    blocker.mkdir()
    result = await sink.write([letter(0)])
    assert result.accepted == [0] and sink.healthy()
    await sink.close()


async def test_failed_write_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = await open_sink(tmp_path)
    await sink.write([letter(0)])
    before = sink.path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    result = await sink.write([letter(1), letter(2)])
    assert result.retry == [0, 1] and "No space" in result.reason and not sink.healthy()
    assert sink.path.read_bytes() == before
    monkeypatch.undo()
    assert (await sink.write([letter(1)])).accepted == [0]
    await sink.close()
    assert [r["topic"] for r in read_dead_letters(sink.path)] == ["dev/0/telemetry", "dev/1/telemetry"]


def test_reader_filters_limits_and_skips_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    Path(f"{path}.2").write_bytes(orjson.dumps(letter(0, "Too HOT").to_record()) + b"\n")
    Path(f"{path}.1").write_bytes(orjson.dumps(letter(1, "missing field").to_record()) + b"\n[1]\n")
    path.write_bytes(orjson.dumps(letter(2, "too hot again").to_record()) + b'\n{"torn": ')
    (tmp_path / "dl.jsonl.bak").write_text("not a rotated file")
    assert [r["reason"] for r in read_dead_letters(path)] == ["Too HOT", "missing field", "too hot again"]
    assert [r["reason"] for r in read_dead_letters(path, reason_contains="hot")] == ["Too HOT", "too hot again"]
    assert [r["reason"] for r in read_dead_letters(path, limit=2)] == ["missing field", "too hot again"]
    assert read_dead_letters(path, limit=0) == []
    assert read_dead_letters(tmp_path / "absent.jsonl") == []


async def test_empty_batch_creates_nothing(tmp_path: Path) -> None:
    sink = DeadLetterFileSink(config(), tmp_path / "none")
    result = await sink.write([])
    assert (result.accepted, result.retry, result.rejected) == ([], [], {})
    assert not (tmp_path / "none").exists()
