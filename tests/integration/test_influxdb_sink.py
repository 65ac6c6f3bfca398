"""The InfluxDB sink's HTTP outcome mapping, against a scripted local HTTP server, and a
real write into VictoriaMetrics."""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.core.message import FieldValue, Reading
from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig, parse_retry_after
from gateway.sinks.lineprotocol_lines import encode_batch
from tests.servers import VictoriaMetrics, free_port

pytestmark = pytest.mark.integration


@dataclass
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class FakeInflux:
    """Answers each POST with the next scripted `Reply` (204 when none is left) and records it."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Request] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer(Reply(204))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                url = urllib.parse.urlsplit(self.path)
                fake.requests.append(
                    Request(url.path, dict(urllib.parse.parse_qsl(url.query)), dict(self.headers.items()), body)
                )
                self._answer(fake.replies.pop(0) if fake.replies else Reply())

            def _answer(self, reply: Reply) -> None:
                time.sleep(reply.delay)
                with contextlib.suppress(ConnectionError):  # a client that timed out has gone
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def reply(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"", delay: float = 0.0) -> None:
        self.replies.append(Reply(status, headers or {}, body, delay))


@pytest.fixture
def fake() -> Iterator[FakeInflux]:
    server = FakeInflux()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def readings(n: int, measurement: str = "env", **fields: Any) -> list[Reading]:
    now = time.time_ns()
    return [
        Reading(measurement, f"d{i}", {"device_id": f"d{i}"}, fields or {"v": float(i)}, now - i * 1_000_000)
        for i in range(n)
    ]


async def sink_for(url: str, tmp_path: Path, **kwargs: Any) -> InfluxDBSink:
    sink = InfluxDBSink(InfluxDBSinkConfig(name="tsdb", subscription="tsdb", url=url, **kwargs), tmp_path)
    await sink.start()
    return sink


async def test_2xx_accepts_all_and_posts_line_protocol(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path, org="acme", bucket="b1", token="s3cret")
    assert sink.healthy()
    batch = readings(3)
    result = await sink.write(batch)
    await sink.close()
    assert result.accepted == [0, 1, 2] and not result.retry and not result.rejected
    (req,) = fake.requests
    assert req.path == "/api/v2/write"
    assert req.query == {"org": "acme", "bucket": "b1", "precision": "ns"}
    assert req.headers["Authorization"] == "Token s3cret"
    assert req.body == encode_batch(batch)


async def test_429_retries_after_the_given_seconds(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path)
    fake.reply(429, {"Retry-After": "3"}, b'{"code":"too many requests","message":"slow down"}')
    result = await sink.write(readings(4))
    assert result.retry == [0, 1, 2, 3] and result.retry_after == timedelta(seconds=3)
    assert "429" in result.reason and "slow down" in result.reason
    assert not sink.healthy()
    assert (await sink.write(readings(1))).accepted == [0] and sink.healthy()
    await sink.close()


async def test_503_retries_with_an_http_date_or_without_a_hint(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path)
    fake.reply(503, {"Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)})
    fake.reply(503)
    first = await sink.write(readings(2))
    second = await sink.write(readings(2))
    await sink.close()
    assert first.retry == [0, 1] and first.retry_after is not None
    assert timedelta(seconds=25) <= first.retry_after <= timedelta(seconds=31)
    assert second.retry == [0, 1] and second.retry_after is None


async def test_500_retries_and_the_client_does_not_retry_by_itself(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path)
    fake.reply(500, body=b"internal error")
    result = await sink.write(readings(3))
    await sink.close()
    assert result.retry == [0, 1, 2] and "500" in result.reason and "internal error" in result.reason
    assert len(fake.requests) == 1


async def test_413_splits_and_a_single_reading_is_rejected(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path)
    fake.reply(413, body=b'{"code":"request too large","message":"body too big"}')
    fake.reply(413, body=b'{"code":"request too large","message":"body too big"}')
    many = await sink.write(readings(3))
    one = await sink.write(readings(1))
    await sink.close()
    assert many.split == [0, 1, 2] and not many.rejected and not many.retry
    assert list(one.rejected) == [0] and "413" in one.rejected[0] and "body too big" in one.rejected[0]
    assert sink.healthy()


async def test_400_rejects_the_batch_with_the_servers_message(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path)
    fake.reply(400, {"Content-Type": "application/json"}, b'{"code":"invalid","message":"unable to parse line 2"}')
    result = await sink.write(readings(3))
    await sink.close()
    assert sorted(result.rejected) == [0, 1, 2] and not result.accepted and not result.retry
    assert all("400" in r and "unable to parse line 2" in r for r in result.rejected.values())
    assert sink.healthy()


async def test_422_partial_write_rejects_the_batch_with_the_body(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path)
    fake.reply(422, body=b'{"code":"unprocessable entity","message":"partial write: field type conflict dropped=1"}')
    result = await sink.write(readings(2))
    await sink.close()
    assert sorted(result.rejected) == [0, 1] and "partial write: field type conflict dropped=1" in result.rejected[0]


async def test_401_rejects_and_marks_unhealthy(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path, token="wrong")
    fake.reply(401, body=b'{"code":"unauthorized","message":"unauthorized access"}')
    result = await sink.write(readings(2))
    assert sorted(result.rejected) == [0, 1] and "unauthorized access" in result.rejected[0]
    assert not sink.healthy()
    assert (await sink.write(readings(1))).accepted == [0] and sink.healthy()
    await sink.close()


async def test_unencodable_readings_are_rejected_alone(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path)
    good = readings(3)
    bad_nan = Reading("env", "d9", {"device_id": "d9"}, {"v": float("nan")}, time.time_ns())
    bad_nl = Reading("env\nx", "d9", {"device_id": "d9"}, {"v": 1.0}, time.time_ns())
    result = await sink.write([good[0], bad_nan, good[1], "junk", bad_nl, good[2]])
    await sink.close()
    assert result.accepted == [0, 2, 5]
    assert sorted(result.rejected) == [1, 3, 4]
    assert "NaN" in result.rejected[1] and "str" in result.rejected[3] and "newline" in result.rejected[4]
    assert fake.requests[0].body == encode_batch(good)


async def test_nothing_encodable_sends_nothing(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path)
    result = await sink.write([Reading("env", "d", {}, {}, 1)])
    empty = await sink.write([])
    await sink.close()
    assert list(result.rejected) == [0] and (empty.accepted, empty.rejected, empty.retry) == ([], {}, [])
    assert fake.requests == []


async def test_precision_and_gzip(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path, precision="s", gzip=True)
    batch = readings(2)
    assert (await sink.write(batch)).accepted == [0, 1]
    await sink.close()
    (req,) = fake.requests
    assert req.query["precision"] == "s" and req.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(req.body) == encode_batch(batch, "s")


async def test_timeout_means_retry(fake: FakeInflux, tmp_path: Path) -> None:
    sink = await sink_for(fake.url, tmp_path, timeout=timedelta(milliseconds=200))
    fake.reply(204, delay=1.0)
    started = time.monotonic()
    result = await sink.write(readings(2))
    await sink.close()
    assert result.retry == [0, 1] and "timed out" in result.reason.lower()
    assert time.monotonic() - started < 0.9


async def test_server_down_means_retry_and_start_does_not_raise(tmp_path: Path) -> None:
    sink = await sink_for(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert not sink.healthy()
    result = await sink.write(readings(3))
    await sink.close()
    assert result.retry == [0, 1, 2] and result.retry_after is None
    assert "refused" in result.reason.lower()


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    http_date = format_datetime(datetime.fromtimestamp(now + 12, UTC), usegmt=True)
    assert parse_retry_after("3") == timedelta(seconds=3)
    assert parse_retry_after(" 1.5 ") == timedelta(seconds=1.5)
    assert parse_retry_after(http_date, now=now) == timedelta(seconds=12)
    assert parse_retry_after(http_date, now=now + 60) == timedelta(0)
    assert parse_retry_after("-4") == timedelta(0)
    for junk in (None, "", "soon", "nan", "Mon, 99 Foo 2020"):
        assert parse_retry_after(junk) is None


def test_config_validation(tmp_path: Path) -> None:
    cfg = InfluxDBSinkConfig(name="t", subscription="s", url="http://h:8086")
    assert (cfg.bucket, cfg.org, cfg.precision, cfg.timeout, cfg.gzip, cfg.token) == (
        "telemetry",
        "",
        "ns",
        timedelta(seconds=10),
        False,
        None,
    )
    for bad in ({"url": "h:8086"}, {"url": "http://h", "timeout": 0}, {"url": "http://h", "extra": 1}):
        with pytest.raises(ValueError):
            InfluxDBSinkConfig(name="t", subscription="s", **bad)
    assert InfluxDBSinkConfig(name="t", subscription="s", url="http://h", timeout="250ms").timeout == timedelta(
        milliseconds=250
    )
    assert "s3cret" not in repr(InfluxDBSinkConfig(name="t", subscription="s", url="http://h", token="s3cret"))


async def test_victoriametrics_stores_the_batch(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    sink = await sink_for(victoria.url, tmp_path)
    assert sink.healthy()
    batch = readings(5, measurement="influx_it", temp=21.5, count=3)
    odd = Reading("influx_it", "d x", {"device_id": "d x", "loc": 'a,b="c"\\'}, {"temp": -1.0}, time.time_ns())
    result = await sink.write([*batch, odd])
    await sink.close()
    assert result.accepted == [0, 1, 2, 3, 4, 5]
    assert victoria.wait_for_count("influx_it_temp", 6) == 6
    assert victoria.wait_for_count("influx_it_count", 5) == 5
    (series,) = victoria.export('influx_it_temp{device_id="d x"}')
    assert series["metric"] == {"__name__": "influx_it_temp", "device_id": "d x", "loc": 'a,b="c"\\'}


async def test_victoriametrics_reads_every_float_spelling_back(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    """Floats are spelled as orjson spells them (`1.5e-7`, `0.00001`, `1e+22`); the store must
    read each back to the same value, from a bulk-formatted run and from lines made one by one.
    (One field per value: the store compresses a series' block to one decimal exponent, so
    tiny and huge values in one series would lose digits there, whatever the spelling.)"""
    values = [1.5e-7, 1e-5, 2.5e-5, 1e22, 1e16, -0.0, 0.1, 123456.789, 5e-300]
    fields: dict[str, FieldValue] = {f"v{k}": v for k, v in enumerate(values)}
    start = time.time_ns() - 60 * 10**9  # a second apart: the store keeps one point per series and millisecond
    run = [Reading("influx_fl", "run", {"device_id": "run"}, dict(fields), start + i * 10**9) for i in range(4)]
    alternating = [  # runs of one reading: encoded one by one
        Reading("influx_fl", d, {"device_id": d}, dict(fields), start + i * 10**9)
        for i in range(2)
        for d in ("one_a", "one_b")
    ]
    sink = await sink_for(victoria.url, tmp_path)
    result = await sink.write([*run, *alternating])
    await sink.close()
    assert result.accepted == list(range(8))
    assert victoria.wait_for_count("influx_fl_v0", 8) == 8
    for k, v in enumerate(values):
        for device, n in (("run", 4), ("one_a", 2), ("one_b", 2)):
            (series,) = victoria.export(f'influx_fl_v{k}{{device_id="{device}"}}')
            assert series["values"] == [v] * n, (device, k)
