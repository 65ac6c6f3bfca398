"""InfluxDB (2.x/3.x write API, or anything speaking it, such as VictoriaMetrics) sink.

Readings are encoded by `gateway.sinks.lineprotocol` and posted as one body per batch with
influxdb-client's synchronous write API, in a worker thread. influxdb-client's own retries
are off (`retries=False` on the urllib3 pool; the synchronous path adds none), so each
`write` is exactly one HTTP request and the SinkRunner alone decides about retrying.

Outcome mapping (for the readings that could be encoded):

* 2xx: all accepted.
* 429, 503: retry, with `retry_after` from the Retry-After header (seconds or HTTP date).
* 413: split; a single reading that still gets 413 is rejected.
* any other 4xx: the whole batch is rejected with the server's message (422 "partial
  write" included: which lines InfluxDB kept is not reported per line, so the batch is
  dead-lettered whole and can be replayed, as identical points overwrite).
* 5xx, other statuses, connection errors and timeouts: retry (Retry-After honoured if sent).

A reading that cannot be encoded (see `LineProtocolError`), or an item that is not a
`Reading`, is rejected on its own and the rest are still written. `healthy()` is False after
a write that ends in retry or in 401/403/404 (credentials, org or bucket wrong) until the
next successful write; data rejections (400, 413, 422) say nothing about the server.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from gateway.core.duration import Duration
from gateway.core.sink import WriteResult
from gateway.sinks.blocking import BlockingSink
from gateway.sinks.config import SinkConfigBase
from gateway.sinks.lineprotocol_lines import encode_lines

_MAX_REASON = 1000
_UNHEALTHY_STATUSES = frozenset({401, 403, 404})


class InfluxDBSinkConfig(SinkConfigBase):
    """Where and how to write readings over the InfluxDB v2 write API."""

    type: Literal["influxdb"] = "influxdb"
    url: str = Field(description="Base URL, e.g. http://localhost:8086 (the path /api/v2/write is added).")
    org: str = Field("", description="Organization name or ID (required by InfluxDB 2 OSS, ignored by others).")
    bucket: str = Field("telemetry", min_length=1, description="Destination bucket (database/retention policy).")
    token: SecretStr | None = Field(None, description="API token, sent as `Authorization: Token ...`.")
    precision: Literal["ns", "us", "ms", "s"] = Field(
        "ns", description="Timestamp precision written; coarser precision merges readings within one unit."
    )
    timeout: Duration = Field(timedelta(seconds=10), description="Whole-request timeout (connect, send, answer).")
    gzip: bool = Field(False, description="Compress request bodies (less bandwidth, more CPU).")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, not {url!r}")
        return url

    @field_validator("timeout")
    @classmethod
    def _positive(cls, timeout: timedelta) -> timedelta:
        if timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        return timeout


def parse_retry_after(value: str | None, now: float | None = None) -> timedelta | None:
    """A Retry-After header (delay in seconds, or an HTTP date) as a delay; None if absent
    or unparseable. A date in the past gives zero."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return timedelta(seconds=min(max(seconds, 0.0), 86_400.0))


class InfluxDBSink(BlockingSink):
    """Writes `Reading`s over the InfluxDB v2 write API. See the module docstring.

    `data_dir` is accepted for the common sink constructor; this sink keeps nothing on disk."""

    def __init__(self, config: InfluxDBSinkConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self._client: Any = None
        self._write_api: Any = None
        self._client_lock = threading.Lock()
        self._healthy = True

    async def start(self) -> None:
        """Create the HTTP client and ping the server (waiting at most `timeout`). Never
        raises because the server is down: the sink is then unhealthy, and writes report
        retry until it answers."""
        self._healthy = await asyncio.to_thread(self._ping)

    def _ensure_client(self) -> Any:
        with self._client_lock:
            if self._write_api is None:
                from influxdb_client.client.influxdb_client import InfluxDBClient
                from influxdb_client.client.write_api import SYNCHRONOUS

                cfg = self.config
                self._client = InfluxDBClient(
                    url=cfg.url,
                    token=cfg.token.get_secret_value() if cfg.token else "",
                    org=cfg.org,
                    timeout=max(1, int(cfg.timeout.total_seconds() * 1000)),
                    enable_gzip=cfg.gzip,
                    retries=False,
                )
                self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
            return self._write_api

    def _ping(self) -> bool:
        self._ensure_client()
        return bool(self._client.ping())

    def _close_sync(self) -> None:
        with self._client_lock:
            client, self._client, self._write_api = self._client, None, None
        if client is not None:
            client.close()

    def _write_sync(self, items: list[Any]) -> WriteResult:
        import urllib3
        from influxdb_client.rest import ApiException

        precision = self.config.precision
        body, good, rejected = encode_lines(items, precision)
        if not good:
            return WriteResult(rejected=rejected, reason="no encodable readings")
        try:
            self._ensure_client().write(
                bucket=self.config.bucket, org=self.config.org, record=body, write_precision=precision
            )
        except ApiException as exc:
            return self._from_status(exc, good, rejected)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._healthy = False
            reason = f"{self.config.url}: {type(exc).__name__}: {exc}"
            return WriteResult(retry=good, rejected=rejected, reason=reason[:_MAX_REASON])
        self._healthy = True
        return WriteResult(accepted=good, rejected=rejected)

    def _from_status(self, exc: Any, good: list[int], rejected: dict[int, str]) -> WriteResult:
        status = int(exc.status or 0)
        message = str(getattr(exc, "message", "") or exc.body or exc.reason or "")
        reason = f"HTTP {status} from {self.config.url}: {message}"[:_MAX_REASON]
        retry_after = parse_retry_after(getattr(exc, "retry_after", None))
        if status == 413:
            if len(good) > 1:
                return WriteResult(split=good, rejected=rejected, reason=reason)
            return WriteResult(rejected={**rejected, good[0]: reason}, reason=reason)
        if 400 <= status < 500 and status != 429:
            if status in _UNHEALTHY_STATUSES:
                self._healthy = False
            return WriteResult(rejected={**rejected, **{i: reason for i in good}}, reason=reason)
        self._healthy = False
        return WriteResult(retry=good, rejected=rejected, retry_after=retry_after, reason=reason)
