"""The client ingress's MQTT client: aiomqtt (connection, subscriptions, keep-alive) over
paho-mqtt 2, with inbound PUBLISH packets parsed in bulk beside paho and PUBACKs written in bulk.

paho-mqtt 2 reads every packet header with 1-byte `recv()` calls and builds an `MQTTMessage`
and (MQTT 5) a `Properties` object per publish before calling `on_message`: about half of
the client ingress's CPU time. `PublishReader` takes over the socket reads of one paho client
(private API: `Client._sock_recv`, `loop_read`, `_packet_read`, `_last_msg_in`):

* `loop_read` (called by aiomqtt's reader callback) reads up to `READ_SIZE` bytes at once and
  splits them into packets. PUBLISH packets of QoS 0 and 1 are parsed here (topic, packet id,
  payload; MQTT 5 properties are skipped) and handed to `on_publish` in stream order. Every
  other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, a QoS 2 PUBLISH ...) is handed to paho
  unchanged, in stream order, so paho keeps the connection's state, keep-alive and errors.
* End of stream and socket errors are handed to paho the same way (it reports the
  disconnection to aiomqtt). A malformed remaining length also goes to paho, which closes.

What is given up: paho's `on_message` is not called for the publishes parsed here, and the
broker must not use MQTT 5 topic aliases (it may not: we never send Topic Alias Maximum).
"""

from __future__ import annotations

import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingress.config import ClientIngressConfig

READ_SIZE = 256 * 1024
OnPublish = Callable[[str, bytes, int, int], None]  # topic, payload, qos, packet id (0 for QoS 0)
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_NO_CONN = MQTTErrorCode.MQTT_ERR_NO_CONN
_PUBACK = 0x40


def open_client(
    config: ClientIngressConfig,
    tls: ssl.SSLContext | None,
    on_publish: OnPublish,
    on_read: Callable[[int], None] | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client (not connected) with manual acks, whose publishes go to `on_publish`;
    `on_read(n)`, if given, is told the size of every socket read that completes a packet,
    after its publishes (a read that only continues a packet is not reported)."""
    c = config
    v5 = c.protocol == "5"
    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = int(c.session_expiry.total_seconds())
        properties.ReceiveMaximum = c.max_inflight
    client = aiomqtt.Client(
        c.host,
        c.port,
        username=c.username,
        password=c.password.get_secret_value() if c.password is not None else None,
        identifier=c.client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        clean_session=None if v5 else c.clean_start,
        clean_start=c.clean_start if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        keepalive=int(c.keepalive.total_seconds()),
        properties=properties,
        tls_context=tls,
    )
    inner: Any = client._client  # private: paho beneath aiomqtt
    inner.manual_ack_set(True)
    PublishReader(inner, v5, on_publish, on_read)
    return client


class PublishReader:
    """Bulk reader for one paho client (one connection). Install once, before `connect`."""

    def __init__(
        self, inner: Any, v5: bool, on_publish: OnPublish, on_read: Callable[[int], None] | None = None
    ) -> None:
        self._inner = inner
        self._v5 = v5
        self._on_publish = on_publish
        self._on_read = on_read
        self._buf = bytearray()  # bytes read but not yet handled: the start of a packet
        self._feed = bytearray()  # bytes handed to paho (not PUBLISH), read through _paho_recv
        self._error: BaseException | None = None
        self._eof = False
        inner._sock_recv = self._paho_recv
        inner.loop_read = self.loop_read

    def _paho_recv(self, bufsize: int) -> bytes:
        if self._feed:
            out = bytes(self._feed[:bufsize])
            del self._feed[:bufsize]
            return out
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._eof:
            return b""
        raise BlockingIOError

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        inner = self._inner
        if inner._sock is None:
            return _NO_CONN
        try:
            data = paho.Client._sock_recv(inner, READ_SIZE)
        except BlockingIOError:
            return _SUCCESS
        except (OSError, ConnectionError) as exc:
            self._error = exc
            return self._to_paho()
        if not data:
            self._eof = True
            return self._to_paho()
        inner._last_msg_in = time.monotonic()
        buf = self._buf
        buf += data
        n = len(buf)
        if n >= 2:
            length, start = read_varint(buf, 1, n)
            if length == -1 or start + length > n:  # the first packet is not complete: no copy yet
                return self._to_paho() if self._feed else _SUCCESS
        # One copy per read that completes packets, so a large packet arriving over many
        # reads is copied once, not once per read.
        pos = self._split(bytes(buf))
        del buf[:pos]
        if self._on_read is not None:
            self._on_read(len(data))
        return self._to_paho() if self._feed else _SUCCESS

    def _split(self, buf: bytes) -> int:
        """Handle every complete packet in `buf`; return the offset of the first incomplete one.

        `buf` is `bytes`, so a slice of it is one copy (a `bytearray` slice would be copied
        again into `bytes`); remaining lengths under 128 are read inline."""
        n = len(buf)
        pos = 0
        on_publish = self._on_publish
        while n - pos >= 2:
            first = buf[pos]
            length = buf[pos + 1]
            if length < 0x80:
                i = pos + 2
            else:
                length, i = read_varint(buf, pos + 1, n)
                if length < 0:
                    if length == -2:  # malformed: let paho see it and close the connection
                        self._feed += buf[pos:]
                        return n
                    break
            end = i + length
            if end > n:
                break
            qos = (first >> 1) & 3
            if first & 0xF0 == 0x30 and qos < 2:
                try:
                    topic, payload, mid = self._publish(buf, i, end, qos)
                except ValueError:  # truncated fields: malformed, paho closes
                    self._feed += buf[pos:]
                    return n
                on_publish(topic, payload, qos, mid)
            else:
                self._feed += buf[pos:end]
                if self._to_paho() != _SUCCESS:
                    return n
            pos = end
        return pos

    def _publish(self, buf: bytes, i: int, end: int, qos: int) -> tuple[str, bytes, int]:
        if i + 2 > end:
            raise ValueError("truncated topic length")
        t_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
        mid = 0
        p = t_end
        if qos:
            mid = (buf[p] << 8) | buf[p + 1] if p + 2 <= end else -1
            p += 2
        if self._v5:
            if p < end and buf[p] < 0x80:  # the usual: no properties or a few
                p += 1 + buf[p]
            else:
                props, p = read_varint(buf, p, end)
                if props < 0:
                    raise ValueError("bad properties length")
                p += props
        if p > end or mid < 0:
            raise ValueError("truncated publish")
        try:
            topic = buf[i + 2 : t_end].decode("utf-8")
        except UnicodeDecodeError:  # not valid MQTT; let validation dead-letter it
            topic = buf[i + 2 : t_end].decode("utf-8", "backslashreplace")
        return topic, buf[p:end], mid

    def _to_paho(self) -> MQTTErrorCode:
        """Let paho read what was fed to it (and the end of stream or error, if any)."""
        inner = self._inner
        while inner._sock is not None:
            pending = bool(self._feed) or self._error is not None or self._eof
            if not pending:
                return _SUCCESS
            rc = paho.Client._packet_read(inner)
            if rc > 0:
                result: MQTTErrorCode = inner._loop_rc_handle(rc)
                return result
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN and not self._feed:
                return _SUCCESS
        return _NO_CONN


def read_varint(buf: bytes | bytearray, i: int, n: int) -> tuple[int, int]:
    """(value, offset after it); value -1 when incomplete, -2 when longer than 4 bytes."""
    value = 0
    shift = 0
    while i < n:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift >= 28:
            return -2, i
    return -1, i


def write_pubacks(inner: Any, mids: list[int]) -> None:
    """PUBACK (success) for `mids`, in order, queued on paho as one write (its `ack` makes one
    write and one event-loop wake-up per message). Remaining length 2 means success in MQTT
    3.1.1 and 5."""
    if mids:
        inner._packet_queue(_PUBACK, b"".join([struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids]), 0, 0)
