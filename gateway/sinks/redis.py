"""The Redis forwarder of cache invalidations: DEL of templated keys and/or PUBLISH.

For each `Invalidation` and each of its ids: `DEL` every key built from the `delete_keys`
templates (`{object_type}`, `{id}`, `{device_id}`, e.g. `device:{device_id}`), then
`PUBLISH <channel> <event JSON>` once per event. A batch goes in one pipeline (not a
transaction). Outcome: all accepted when Redis answered; connection errors and timeouts:
retry the batch (DEL and PUBLISH are safe to repeat: a cache entry deleted twice is still
deleted; subscribers may see an invalidation twice); a Redis error reply: rejected. Items
that are not invalidations are rejected.

The client (redis-py asyncio) connects lazily on the first command and reconnects by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.core.duration import Duration
from gateway.core.sink import WriteResult
from gateway.processors.events import INVALIDATION_TEMPLATE_VARS, Invalidation, check_template, render
from gateway.sinks.forwarder import ForwarderConfigBase


class RedisSinkConfig(ForwarderConfigBase):
    type: Literal["redis"] = "redis"
    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// URL (no password in it).")
    password: SecretStr | None = Field(None, description="AUTH password; put it in the environment.")
    channel: str | None = Field("cache-invalidations", description="PUBLISH each event here; null: do not publish.")
    delete_keys: list[str] = Field(default_factory=list, description="Key templates to DEL, e.g. device:{device_id}.")
    timeout: Duration = Field(timedelta(seconds=2), description="Connect and command timeout.")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url must start with redis://, rediss:// or unix://, not {url!r}")
        return url

    @field_validator("delete_keys")
    @classmethod
    def _templates(cls, keys: list[str]) -> list[str]:
        return [check_template(k, INVALIDATION_TEMPLATE_VARS) for k in keys]

    @model_validator(mode="after")
    def _something_to_do(self) -> RedisSinkConfig:
        if self.channel is None and not self.delete_keys:
            raise ValueError("set a channel, delete_keys, or both")
        if self.timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        return self


class RedisSink:
    def __init__(self, config: RedisSinkConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self._client: aioredis.Redis | None = None
        self._stale: list[aioredis.Redis] = []
        self._healthy = True

    def reconfigure(self, config: RedisSinkConfig) -> None:
        """Hot reload: channel and key templates apply at once; a new url or password reconnects."""
        old = self.config
        if (config.url, config.password, config.timeout) != (old.url, old.password, old.timeout):
            if self._client is not None:
                self._stale.append(self._client)  # closed before the next write
            self._client = None
        self.config = config

    async def start(self) -> None:
        return None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            c = self.config
            t = c.timeout.total_seconds()
            self._client = aioredis.Redis.from_url(
                c.url,
                password=c.password.get_secret_value() if c.password else None,
                socket_timeout=t,
                socket_connect_timeout=t,
            )
        return self._client

    async def write(self, items: Sequence[Any]) -> WriteResult:
        await self._close_stale()
        result = WriteResult()
        good: list[int] = []
        pipe = self._redis().pipeline(transaction=False)
        for i, item in enumerate(items):
            if not isinstance(item, Invalidation):
                result.rejected[i] = f"the redis forwarder takes invalidations, not {type(item).__name__}"
                continue
            keys = [render(t, v) for v in item.template_vars_per_id() for t in self.config.delete_keys]
            if keys:
                pipe.delete(*keys)
            if self.config.channel is not None:
                pipe.publish(self.config.channel, orjson.dumps(item.to_dict()))
            good.append(i)
        if not good:
            return result
        try:
            await pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self._healthy = False
            result.retry = good
            result.reason = f"redis {self.config.url}: {exc!r}"
            return result
        except redis.exceptions.RedisError as exc:
            result.rejected.update({i: f"redis error: {exc}" for i in good})
            return result
        self._healthy = True
        result.accepted = good
        return result

    async def close(self) -> None:
        await self._close_stale()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _close_stale(self) -> None:
        while self._stale:
            with contextlib.suppress(Exception):
                await self._stale.pop().aclose()

    def healthy(self) -> bool:
        return self._healthy
