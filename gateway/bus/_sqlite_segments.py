"""Segments: how the SQLite bus stores many messages in one row.

Private to the SQLite bus. One group commit writes one `segments` row per topic it touches.
On this kind of machine an SQLite row costs several µs of CPU whatever its size, and every
SQLite call in the writer thread may wait for the GIL, so one row per message would cap the
log far below the in-memory bus.

A segment's `data` is a run of chunks, one per `publish` hand-over (messages with
consecutive sequence numbers and one publish time), each laid out in columns so that
packing and unpacking are mostly C-level work:

    header: uint32 first seq - segment's first seq | int64 publish_ns | uint32 count
            | uint32 key bytes | uint32 data bytes
    int32[count] sizes | int32[count] ordering key lengths (-1: no key) | uint32[count] data lengths
    the ordering keys (UTF-8), concatenated | the message data (`gateway.bus.codec`), concatenated

`stored_size` (data + `RECORD_OVERHEAD` for its three column entries) is what a message
counts towards `max_bytes`; its ordering key, the chunk header and SQLite's own overhead
are not counted (the key is a device id: small next to the data).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import Any, NamedTuple

from gateway.bus.codec import CodecError

_HEADER = struct.Struct("<IqIII")
RECORD_OVERHEAD = 12
_SWAP = sys.byteorder != "little"  # the columns are stored little-endian


@dataclass(slots=True)
class Chunk:
    """Messages handed over by one publish: sequence numbers `first_seq`, `first_seq + 1`, ..."""

    first_seq: int
    topic_id: int
    publish_ns: int
    sizes: list[int]
    keys: list[str | None]
    blobs: list[bytes]


class StoredChunk(NamedTuple):
    """A chunk read back: messages `first_seq`, `first_seq + 1`, ... published at `publish_ns`."""

    first_seq: int
    publish_ns: int
    keys: list[str | None]
    sizes: list[int]
    blobs: list[bytes]


Segment = tuple[int, int, int, int, int, bytes]  # first_seq, last_seq, topic_id, newest publish_ns, count, data


def stored_size(data: bytes) -> int:
    """What one message counts towards `max_bytes`."""
    return RECORD_OVERHEAD + len(data)


def pack(chunks: list[Chunk]) -> list[Segment]:
    """One segment per topic of `chunks` (given in ascending sequence order)."""
    by_topic: dict[int, list[Chunk]] = {}
    for c in chunks:
        by_topic.setdefault(c.topic_id, []).append(c)
    out: list[Segment] = []
    for tid, group in by_topic.items():
        first = group[0].first_seq
        parts: list[bytes] = []
        count = 0
        for c in group:
            n = len(c.blobs)
            present = [k for k in c.keys if k is not None]
            keys = "".join(present).encode()
            if len(keys) == sum(map(len, present)):  # ASCII: characters are bytes
                key_lens = array("i", [-1 if k is None else len(k) for k in c.keys])
            else:
                key_lens = array("i", [-1 if k is None else len(k.encode()) for k in c.keys])
            data_lens = array("I", map(len, c.blobs))
            sizes = array("i", c.sizes)
            data = b"".join(c.blobs)
            if _SWAP:
                for column in (sizes, key_lens, data_lens):
                    column.byteswap()
            parts += (
                _HEADER.pack(c.first_seq - first, c.publish_ns, n, len(keys), len(data)),
                sizes.tobytes(),
                key_lens.tobytes(),
                data_lens.tobytes(),
                keys,
                data,
            )
            count += n
        last = group[-1]
        out.append((first, last.first_seq + len(last.blobs) - 1, tid, last.publish_ns, count, b"".join(parts)))
    return out


def unpack(first_seq: int, data: bytes) -> Iterator[tuple[int, int, str | None, int, bytes]]:
    """The messages of a segment as (seq, publish_ns, key, size, data bytes).

    Raises CodecError where the layout does not fit the stored bytes (a damaged segment).
    """
    for c in unpack_chunks(first_seq, data):
        yield from zip(range(c.first_seq, c.first_seq + len(c.blobs)), repeat(c.publish_ns), c.keys, c.sizes, c.blobs)


def unpack_chunks(first_seq: int, data: bytes) -> Iterator[StoredChunk]:
    """The chunks of a segment, in order, each unpacked column-wise (the fast way to read a page).

    Raises CodecError where the layout does not fit the stored bytes (a damaged segment);
    the chunks before the damage have been yielded by then.
    """
    view = memoryview(data)
    pos = 0
    end = len(data)
    while pos < end:
        if pos + _HEADER.size > end:
            raise CodecError("truncated chunk header in a stored segment")
        delta, ns, n, keys_len, data_len = _HEADER.unpack_from(view, pos)
        pos += _HEADER.size
        columns = []
        for code in ("i", "i", "I"):
            column = array(code)
            column.frombytes(view[pos : pos + 4 * n])
            if len(column) != n:
                raise CodecError("truncated chunk columns in a stored segment")
            if _SWAP:
                column.byteswap()
            columns.append(column)
            pos += 4 * n
        sizes, key_lens, data_lens = columns
        bad_keys = min(key_lens, default=0) < -1 or sum(key_lens) + key_lens.count(-1) != keys_len  # -1: no key
        if pos + keys_len + data_len > end or bad_keys:
            raise CodecError("chunk lengths do not match a stored segment")
        if sum(data_lens) != data_len:
            raise CodecError("chunk data lengths do not match a stored segment")
        raw_keys = bytes(view[pos : pos + keys_len])
        try:
            if raw_keys.isascii():  # lengths are in bytes: slice the text directly only when it is ASCII
                keys = _split(raw_keys.decode(), key_lens)
            else:
                keys = [None if k is None else k.decode() for k in _split(raw_keys, key_lens)]
        except UnicodeDecodeError as exc:
            raise CodecError(f"invalid ordering keys in a stored segment: {exc}") from None
        pos += keys_len
        blobs = _split(bytes(view[pos : pos + data_len]), data_lens)
        pos += data_len
        yield StoredChunk(first_seq + delta, ns, keys, sizes.tolist(), blobs)


def _split(whole: Any, lengths: array[int]) -> list[Any]:
    """`whole` cut into consecutive pieces of `lengths` (-1: None, taking nothing)."""
    if min(lengths, default=0) >= 0:
        ends = list(accumulate(lengths))
        return list(map(whole.__getitem__, map(slice, [0, *ends[:-1]], ends)))
    ends = list(accumulate(max(0, k) for k in lengths))
    pieces = map(whole.__getitem__, map(slice, [0, *ends[:-1]], ends))
    return [None if k < 0 else p for k, p in zip(lengths, pieces, strict=True)]
