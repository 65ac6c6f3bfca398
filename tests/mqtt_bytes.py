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


def packet(first: int, body: bytes) -> bytes:
    """A packet with a one-byte remaining length (bodies under 128 bytes)."""
    assert len(body) < 128
    return bytes([first, len(body)]) + body


def connect(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with clean session and a 60 s keep-alive."""
    return packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id.encode())


def publish(topic: str, payload: bytes, qos: int, packet_id: int) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return packet(0x30 | qos << 1, body)


DISCONNECT = b"\xe0\x00"
