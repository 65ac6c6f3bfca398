"""The client ingress's bulk PUBLISH parser (gateway.ingress.mqtt_client) on hand-built packets."""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.ingress.mqtt_client import PublishReader, write_pubacks
from tests.mqtt_bytes import varint


def publish(topic: bytes, payload: bytes, qos: int, mid: int, v5: bool, props: bytes = b"") -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    body += (varint(len(props)) + props if v5 else b"") + payload
    return bytes([0x30 | (qos << 1)]) + varint(len(body)) + body


class FakeSocket:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def recv(self, _n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)

    def close(self) -> None:
        self.chunks = []


def reader(v5: bool, chunks: list[bytes]) -> tuple[Any, list[tuple[str, bytes, int, int]]]:
    inner: Any = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    inner._sock = FakeSocket(chunks)
    got: list[tuple[str, bytes, int, int]] = []
    PublishReader(inner, v5, lambda *a: got.append(a))
    return inner, got


@pytest.mark.parametrize("v5", [True, False])
def test_publishes_split_anywhere_arrive_whole_and_in_order(v5: bool) -> None:
    props = b"\x01\x01" if v5 else b""  # Payload Format Indicator: skipped
    stream = b"".join(
        [
            publish(b"devices/a/telemetry", b'{"t":1}', 1, 7, v5, props),
            publish(b"devices/b/telemetry", b"x" * 300, 0, 0, v5),  # two-byte remaining length
            publish(b"devices/c/telemetry", b"", 1, 65535, v5),
        ]
    )
    inner, got = reader(v5, [stream[i : i + 1] for i in range(len(stream))])  # one byte per recv
    for _ in range(len(stream)):
        assert inner.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == [
        ("devices/a/telemetry", b'{"t":1}', 1, 7),
        ("devices/b/telemetry", b"x" * 300, 0, 0),
        ("devices/c/telemetry", b"", 1, 65535),
    ]


def test_a_large_publish_over_many_reads_is_parsed_once_it_is_complete() -> None:
    """Bytes of an incomplete packet wait in the buffer without being copied for parsing on
    every read (that would cost the square of its size)."""
    big = publish(b"devices/big/telemetry", b"x" * 1_000_000, 1, 9, True)
    small = publish(b"devices/s/telemetry", b"{}", 0, 0, True)
    stream = big + small
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    reads = len(chunks)
    inner, got = reader(True, chunks)  # the socket takes the chunks from the list
    parsed: list[int] = []
    split = inner.loop_read.__self__._split
    inner.loop_read.__self__._split = lambda buf: parsed.append(len(buf)) or split(buf)
    for _ in range(reads):
        assert inner.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == [("devices/big/telemetry", b"x" * 1_000_000, 1, 9), ("devices/s/telemetry", b"{}", 0, 0)]
    assert sum(parsed) < 2 * len(stream)


def test_other_packets_go_to_paho_in_stream_order() -> None:
    pingresp = b"\xd0\x00"
    stream = publish(b"t/1", b"a", 0, 0, True) + pingresp + publish(b"t/2", b"b", 0, 0, True)
    inner, got = reader(True, [stream])
    inner._ping_t = 123.0  # a PINGREQ is outstanding; paho clears it on PINGRESP
    inner.loop_read()
    assert [g[0] for g in got] == ["t/1", "t/2"]
    assert inner._ping_t == 0


def test_a_topic_that_is_not_utf8_is_kept_for_validation_to_refuse() -> None:
    inner, got = reader(False, [publish(b"devices/\xff/telemetry", b"{}", 0, 0, False)])
    inner.loop_read()
    assert got[0][0] == "devices/\\xff/telemetry"


def test_end_of_stream_is_reported_by_paho() -> None:
    inner, got = reader(True, [b""])
    assert inner.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST
    assert got == []


def test_pubacks_are_one_write_in_order() -> None:
    queued: list[tuple[int, bytes]] = []

    class Inner:
        def _packet_queue(self, command: int, packet: bytes, mid: int, qos: int) -> None:
            queued.append((command, packet))

    write_pubacks(Inner(), [1, 2, 300])
    write_pubacks(Inner(), [])
    assert queued == [(0x40, b"\x40\x02\x00\x01\x40\x02\x00\x02\x40\x02\x01\x2c")]
