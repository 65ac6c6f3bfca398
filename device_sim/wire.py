"""The few MQTT 3.1.1 packets a publish-only client needs, as bytes, and a packet reader.

Used by the load mode's connections (`device_sim.link`), which write pre-built packets
straight to an asyncio transport instead of going through a general client library.
Covers CONNECT/CONNACK, PUBLISH (QoS 0 and 1)/PUBACK, PINGREQ/PINGRESP and DISCONNECT;
the reader splits any well-formed stream of packets, of any type, into (type, body) pairs.
Encoders raise ValueError for what MQTT cannot carry (strings over 65,535 bytes, packets
over 256 MiB, QoS other than 0/1, packet ids outside 1..65535).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

CONNECT: Final = 0x10
CONNACK: Final = 0x20
PUBLISH: Final = 0x30
PUBACK: Final = 0x40
PINGREQ_PACKET: Final = b"\xc0\x00"
PINGRESP: Final = 0xD0
DISCONNECT_PACKET: Final = b"\xe0\x00"
MAX_REMAINING: Final = 268_435_455

CONNACK_REASONS: Final[dict[int, str]] = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def remaining_length(length: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    if not 0 <= length <= MAX_REMAINING:
        raise ValueError(f"packet of {length} bytes is beyond MQTT's limit of {MAX_REMAINING}")
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def utf8(text: str | bytes) -> bytes:
    """A length-prefixed MQTT string."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError(f"MQTT strings are at most 65535 bytes, got {len(raw)}")
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, keepalive_s: int, username: str | None = None, password: str | None = None) -> bytes:
    """CONNECT with a clean session (a load generator keeps no state at the broker)."""
    flags = 0x02
    payload = utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
        if password is not None:
            flags |= 0x40
            payload += utf8(password)
    body = utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", max(0, min(keepalive_s, 0xFFFF))) + payload
    return bytes([CONNECT]) + remaining_length(len(body)) + body


def publish_head(topic: bytes, payload_len: int, qos: int) -> bytes:
    """Fixed header and topic of a PUBLISH; a QoS 1 packet is `head + packet_id(2) + payload`.

    `topic` is the length-prefixed topic (`utf8(topic)`).
    """
    if qos not in (0, 1):
        raise ValueError(f"qos must be 0 or 1, got {qos}")
    remaining = len(topic) + payload_len + (2 if qos else 0)
    return bytes([PUBLISH | (qos << 1)]) + remaining_length(remaining) + topic


def packet_id(pid: int) -> bytes:
    if not 1 <= pid <= 0xFFFF:
        raise ValueError(f"packet id must be within 1..65535, got {pid}")
    return struct.pack("!H", pid)


class PacketReader:
    """Splits a byte stream into packets; feed it whatever the socket delivered."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Yield (first byte, body) for every complete packet; keep the incomplete rest."""
        buffer = self._buffer + data if self._buffer else data
        position = 0
        end = len(buffer)
        while end - position >= 2:
            length = 0
            shift = 0
            cursor = position + 1
            while True:
                if cursor >= end:
                    self._buffer = buffer[position:]
                    return
                byte = buffer[cursor]
                length |= (byte & 0x7F) << shift
                cursor += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ValueError("malformed remaining length from the broker")
            if end - cursor < length:
                break
            yield buffer[position], buffer[cursor : cursor + length]
            position = cursor + length
        self._buffer = buffer[position:]
