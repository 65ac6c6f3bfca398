"""Hand-built MQTT bytes for tests of the gateway's own packet parsing."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """`n` as an MQTT variable byte integer (remaining length, MQTT 5 property lengths)."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
