"""The column-wise pieces of the SQLite bus's paging: they must give what the one-by-one logic gave.

`DiskBacklog.take` (fast when nothing was dropped), `unpack_chunks` (whole chunks at once) and
`read_messages` (runs of consecutive messages, split around gaps and undecodable data) are the
hot path of a backlog drain; each is compared here with the plain definition it replaces.
"""

from __future__ import annotations

import random
import sqlite3

import pytest

from gateway.bus._sqlite_backlog import DiskBacklog, read_messages
from gateway.bus._sqlite_recovery import SCHEMA
from gateway.bus._sqlite_segments import _HEADER, Chunk, pack, unpack, unpack_chunks
from gateway.bus._sqlite_store import Store
from gateway.bus.codec import CodecError, encode


def _take_one_by_one(seqs: list[int], sizes: list[int], max_n: int, max_bytes: int) -> list[int]:
    """The definition: at least one, then while within max_n messages and max_bytes bytes."""
    out: list[int] = []
    nbytes = 0
    for seq, size in zip(seqs, sizes, strict=True):
        if len(out) >= max_n or (out and nbytes >= max_bytes):
            break
        out.append(seq)
        nbytes += size
    return out


@pytest.mark.parametrize("seed", range(40))
def test_take_matches_its_definition(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(0, 60)
    seqs = list(range(100, 100 + n))
    sizes = [rng.randint(0, 50) for _ in range(n)]
    backlog = DiskBacklog()
    backlog.append(seqs, sizes, 7)
    max_n, max_bytes = rng.randint(0, 70), rng.randint(1, 900)
    want = _take_one_by_one(seqs, sizes, max_n, max_bytes)
    assert backlog.take(max_n, max_bytes) == want
    assert list(backlog.taken) == want
    assert backlog.taken == {s: (sizes[s - 100], 7) for s in want}
    rest = _take_one_by_one(seqs[len(want) :], sizes[len(want) :], 10**6, 10**9)
    backlog.all_arrived()
    assert backlog.count == len(rest) and backlog.bytes == sum(sizes[len(want) :])
    assert backlog.take(10**6, 10**9) == rest


def test_take_skips_what_was_dropped() -> None:
    backlog = DiskBacklog()
    backlog.append(range(1, 11), [10] * 10, 0)
    assert backlog.drop(3) and backlog.drop(4)
    assert backlog.take(4, 10**6) == [1, 2, 5, 6]
    assert backlog.take(10, 10**6) == [1, 2, 5, 6, 7, 8, 9, 10][4:]


def _chunk(first: int, keys: list[str | None], tag: str = "x") -> Chunk:
    blobs = [encode(f"{tag}{first + k}") for k in range(len(keys))]
    return Chunk(first, 1, 1000 + first, [len(b) + 3 for b in blobs], keys, blobs)


def test_unpack_chunks_gives_what_unpack_gives_with_unicode_and_missing_keys() -> None:
    chunks = [_chunk(5, ["a", None, "ü-dev", "b"]), _chunk(9, [None, None]), _chunk(11, ["日本", "z"])]
    [(first, last, _tid, _ns, count, data)] = pack(chunks)
    assert (first, last, count) == (5, 12, 8)
    whole = list(unpack_chunks(first, data))
    assert [c.first_seq for c in whole] == [5, 9, 11]
    assert [k for c in whole for k in c.keys] == ["a", None, "ü-dev", "b", None, None, "日本", "z"]
    flat = [
        (c.first_seq + k, c.publish_ns, c.keys[k], c.sizes[k], c.blobs[k]) for c in whole for k in range(len(c.keys))
    ]
    assert flat == list(unpack(first, data))
    assert [b for c in chunks for b in c.blobs] == [row[4] for row in flat]


def test_unpack_chunks_refuses_an_impossible_key_length() -> None:
    [(first, _last, _tid, _ns, _count, data)] = pack([_chunk(1, ["ab", "c"])])
    damaged = bytearray(data)
    at = _HEADER.size + 4 * 2  # after the header and the two sizes: the first key length
    assert int.from_bytes(damaged[at : at + 4], "little", signed=True) == 2
    damaged[at : at + 4] = (-3).to_bytes(4, "little", signed=True)
    with pytest.raises(CodecError):
        list(unpack_chunks(first, bytes(damaged)))


def test_read_messages_splits_runs_around_gaps_and_undecodable_data() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    chunks = [_chunk(1, ["k"] * 6), _chunk(7, ["k"] * 4)]
    chunks[0].blobs[2] = b"R not json"  # seq 3 cannot be decoded
    for segment in pack(chunks):
        conn.execute(
            "INSERT INTO segments (first_seq, last_seq, topic_id, publish_ns, count, data) VALUES (?,?,?,?,?,?)",
            segment,
        )
    store = Store(conn, 10**9, 0.0)
    runs, bad = read_messages(store, 1, [2, 3, 4, 5, 7, 8, 10])
    assert bad == [3]
    assert [(r.first_seq, r.data) for r in runs] == [(2, ["x2"]), (4, ["x4", "x5"]), (7, ["x7", "x8"]), (10, ["x10"])]
    assert [r.publish_ns for r in runs] == [1001, 1001, 1007, 1007]
    assert [r.keys for r in runs] == [["k"], ["k", "k"], ["k", "k"], ["k"]]
    runs, bad = read_messages(store, 1, list(range(4, 10)))
    assert bad == [] and [(r.first_seq, r.data) for r in runs] == [(4, ["x4", "x5", "x6"]), (7, ["x7", "x8", "x9"])]
    assert read_messages(store, 2, [1, 2]) == ([], [])
