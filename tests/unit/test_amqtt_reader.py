"""The embedded broker's packet cutting and PUBLISH parsing (`gateway.ingress.amqtt_reader`)."""

from __future__ import annotations

import pytest

from gateway.ingress.amqtt_reader import MalformedPacket, PacketTooLarge, next_frame, parse_publish
from tests.mqtt_bytes import varint


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode()
    body += packet_id.to_bytes(2, "big") if qos else b""
    body += payload
    return bytes([0x30 | qos << 1 | int(retain)]) + varint(len(body)) + body


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 300_000])
def test_frames_are_cut_at_their_remaining_length(size: int) -> None:
    packet = publish("a/b", b"x" * size)
    buf = b"\xc0\x00" + packet + b"\xe0\x00"  # PINGREQ, the publish, DISCONNECT
    assert next_frame(buf, 0) == (0xC0, 2, 2)
    first, start, end = next_frame(buf, 2) or (0, 0, 0)
    assert (first, buf[start:end]) == (packet[0], packet[len(packet) - (end - start) :])
    assert next_frame(buf, end) == (0xE0, end + 2, end + 2)


def test_an_incomplete_frame_waits_for_more_bytes() -> None:
    packet = publish("a/b", b"x" * 200)
    for cut in range(len(packet)):
        assert next_frame(packet[:cut], 0) is None
    assert next_frame(packet, 0) is not None


def test_a_remaining_length_over_four_bytes_is_malformed() -> None:
    with pytest.raises(MalformedPacket, match="4 bytes"):
        next_frame(b"\x30\xff\xff\xff\xff\x01", 0)


def test_publishes_are_parsed_with_qos_packet_id_and_retain() -> None:
    for qos, packet_id, retain in ((0, 0, False), (1, 513, True), (2, 65535, False)):
        raw = publish("devices/é/telemetry", b'{"t":1}', qos, packet_id, retain)
        first, start, end = next_frame(raw, 0) or (0, 0, 0)
        m = parse_publish(first, raw[start:end])
        assert (m.topic, m.data, m.qos, m.retain) == ("devices/é/telemetry", b'{"t":1}', qos, retain)
        assert m.packet_id == (packet_id if qos else None)


@pytest.mark.parametrize(
    ("first", "body", "reason"),
    [
        (0x36, b"\x00\x01a\x00\x01", "QoS 3"),
        (0x30, b"\x00", "topic length"),
        (0x30, b"\x00\x05abc", "variable header"),
        (0x32, b"\x00\x01a\x00", "variable header"),
        (0x30, b"\x00\x02\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_publishes_are_refused(first: int, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        parse_publish(first, body)


def test_a_packet_over_the_limit_is_refused_as_soon_as_its_length_is_read() -> None:
    packet = publish("a/b", b"x" * 5000)
    with pytest.raises(PacketTooLarge, match="over the limit of 4096"):
        next_frame(packet[:4], 0, limit=4096)  # header only: the body is never waited for
    assert next_frame(packet, 0, limit=len(packet)) is not None
    with pytest.raises(PacketTooLarge):
        next_frame(packet, 0, limit=len(packet) - 1)
