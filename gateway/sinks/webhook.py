"""The webhook forwarder: one HTTP POST of JSON per event, signed with HMAC-SHA256.

Request: `POST <url>`, body `event.to_dict()` as JSON, headers `Content-Type:
application/json`, `X-Gateway-Event: alert|invalidation`, the configured static `headers`,
and (with a `secret`) `<signature_header>: sha256=<hex HMAC-SHA256 of the raw body with the
secret>`. A receiver verifies it with `verify_signature` (or the same computation) using a
constant-time comparison.

Outcome per event, in batch order (one request at a time, so events arrive in order):
2xx accepted; 408, 429 and 5xx, connection errors and timeouts: retry (Retry-After honoured),
and the events after it in the batch are retried too without being sent, to keep the order;
any other status: rejected (dead-lettered) with the status and the start of the answer.
Each request is one urllib3 call without urllib3's own retries, in a worker thread, bounded by
`timeout` (connect and read each).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
import urllib3
from pydantic import Field, SecretStr, field_validator

from gateway.core.duration import Duration
from gateway.core.sink import WriteResult
from gateway.sinks.forwarder import ForwarderConfigBase, event_dict, event_kind
from gateway.sinks.influxdb import parse_retry_after

_RETRY_STATUSES = frozenset({408, 429})


class WebhookSinkConfig(ForwarderConfigBase):
    type: Literal["webhook"] = "webhook"
    url: str = Field(description="Where events are POSTed (http:// or https://).")
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key of the signature header; put it in the env.")
    signature_header: str = Field("X-Gateway-Signature", min_length=1)
    headers: dict[str, str] = Field(default_factory=dict, description="Static headers added to every request.")
    timeout: Duration = Field(timedelta(seconds=5), description="Connect and read timeout of one request.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, not {url!r}")
        return url

    @field_validator("timeout")
    @classmethod
    def _positive(cls, t: timedelta) -> timedelta:
        if t <= timedelta(0):
            raise ValueError("timeout must be positive")
        return t


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """True if `header` is the signature of `body` with `secret` (constant-time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


class WebhookSink:
    def __init__(self, config: WebhookSinkConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self._pool: urllib3.PoolManager | None = None
        self._healthy = True

    def reconfigure(self, config: WebhookSinkConfig) -> None:
        """Hot reload: URL, secret, headers and timeout apply from the next request."""
        self.config = config

    async def start(self) -> None:
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=2, retries=False)

    async def write(self, items: Sequence[Any]) -> WriteResult:
        return await asyncio.to_thread(self._write_sync, list(items))

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
            self._pool = None

    def healthy(self) -> bool:
        return self._healthy

    def _write_sync(self, items: list[Any]) -> WriteResult:
        result = WriteResult()
        cfg = self.config
        for i, item in enumerate(items):
            try:
                body = orjson.dumps(event_dict(item))
            except TypeError as exc:
                result.rejected[i] = str(exc)
                continue
            headers = {**cfg.headers, "Content-Type": "application/json", "X-Gateway-Event": event_kind(item)}
            if cfg.secret is not None:
                headers[cfg.signature_header] = sign(cfg.secret.get_secret_value().encode(), body)
            status, answer, retry_after = self._post(body, headers)
            if 200 <= status < 300:
                result.accepted.append(i)
                self._healthy = True
                continue
            if status == 0 or status >= 500 or status in _RETRY_STATUSES:
                self._healthy = False
                result.retry.extend(range(i, len(items)))
                result.reason = f"webhook {cfg.url}: {answer}"
                result.retry_after = retry_after
                return result
            result.rejected[i] = f"webhook {cfg.url} answered {status}: {answer}"
        return result

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, timedelta | None]:
        """(status, short text, retry-after); status 0 for a connection error or timeout."""
        pool = self._pool or urllib3.PoolManager(retries=False)
        self._pool = pool
        t = self.config.timeout.total_seconds()
        try:
            r = pool.request(
                "POST", self.config.url, body=body, headers=headers, timeout=urllib3.Timeout(connect=t, read=t)
            )
        except urllib3.exceptions.HTTPError as exc:
            return 0, f"request failed: {type(exc).__name__}: {exc}"[:300], None
        text = r.data[:200].decode("utf-8", "replace").strip()
        return r.status, f"HTTP {r.status} {text}".strip(), parse_retry_after(r.headers.get("Retry-After"))
