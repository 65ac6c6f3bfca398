"""The MQTT forwarder: publishes each alert or invalidation to an MQTT broker.

Topic: the `topic` template filled from the event (alerts: `{alert_id}`, `{rule}`,
`{status}`, `{device_id}`, `{severity}`; invalidations: `{object_type}`, `{id}`,
`{device_id}`, one message per id). Defaults: `alerts/{rule}/{device_id}` and
`cache/invalidate/{object_type}/{id}`. Payload: the event as JSON. With `retain: true` the
broker keeps the latest event per topic, so a late subscriber reads each alert's current
state (`firing` or `resolved`).

Delivery: aiomqtt, QoS `qos` (1 by default: `write` returns accepted once the broker sent
PUBACK). The connection is opened on the first write and reopened after a failure, so a
broker that is down makes writes report retry (and, after the runner's `max_retries`,
dead-letter) instead of blocking start. Events are published one at a time in batch order;
after a failure the rest of the batch is retried too.

Embedded mode: publishing to the gateway's own broker is fine; the gateway ignores messages
published with this sink's `client_id` (see `Gateway.handle`), so they are not dead-lettered
as unrouted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import orjson
from pydantic import Field, SecretStr, model_validator

from gateway.core.duration import Duration
from gateway.core.sink import WriteResult
from gateway.processors.events import (
    ALERT_TEMPLATE_VARS,
    INVALIDATION_TEMPLATE_VARS,
    AlertEvent,
    Invalidation,
    check_template,
    render,
)
from gateway.sinks.forwarder import ForwarderConfigBase

ALERT_TOPIC_DEFAULT = "alerts/{rule}/{device_id}"
INVALIDATION_TOPIC_DEFAULT = "cache/invalidate/{object_type}/{id}"


class MQTTPublishSinkConfig(ForwarderConfigBase):
    type: Literal["mqtt_publish"] = "mqtt_publish"
    host: str = Field("127.0.0.1", description="Broker host (the embedded broker's host by default).")
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="MQTT client id; default iot-gateway-<sink name>.")
    username: str | None = None
    password: SecretStr | None = None
    topic: str | None = Field(None, description="Topic template; default by event type (see the docs).")
    qos: Literal[0, 1, 2] = 1
    retain: bool = Field(False, description="Retain each event: the broker keeps every alert's current state.")
    timeout: Duration = Field(timedelta(seconds=5), description="Connect and per-publish timeout.")

    @model_validator(mode="after")
    def _check(self) -> MQTTPublishSinkConfig:
        if self.topic is not None:
            check_template(self.topic, ALERT_TEMPLATE_VARS | INVALIDATION_TEMPLATE_VARS)
        if self.timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        return self

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"iot-gateway-{self.name}"


def topics_for(item: object, template: str | None) -> list[str]:
    """The topics one event is published to; TypeError for a non-event, KeyError for a template
    naming something this kind of event does not have."""
    if isinstance(item, AlertEvent):
        return [render(template or ALERT_TOPIC_DEFAULT, item.template_vars())]
    if isinstance(item, Invalidation):
        return [render(template or INVALIDATION_TOPIC_DEFAULT, v) for v in item.template_vars_per_id()]
    raise TypeError(f"not an alert or invalidation event but a {type(item).__name__}")


class MQTTPublishSink:
    def __init__(self, config: MQTTPublishSinkConfig, data_dir: Path) -> None:
        self.name = config.name
        self.config = config
        self._client: aiomqtt.Client | None = None
        self._healthy = True

    def reconfigure(self, config: MQTTPublishSinkConfig) -> None:
        """Hot reload: topic, QoS and retain apply at once; connection settings at the next reconnect."""
        self.config = config

    async def start(self) -> None:
        return None

    async def write(self, items: Sequence[Any]) -> WriteResult:
        result = WriteResult()
        for i, item in enumerate(items):
            try:
                topics = topics_for(item, self.config.topic)
            except (TypeError, KeyError) as exc:
                result.rejected[i] = f"cannot publish: {exc!r}"
                continue
            payload = orjson.dumps(item.to_dict())
            try:
                client = await self._connected()
                for topic in topics:
                    await client.publish(
                        topic, payload, qos=self.config.qos, retain=self.config.retain,
                        timeout=self.config.timeout.total_seconds(),
                    )  # fmt: skip
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                await self._disconnect()
                self._healthy = False
                result.retry.extend(range(i, len(items)))
                result.reason = f"mqtt {self.config.host}:{self.config.port}: {exc!r}"
                return result
            result.accepted.append(i)
            self._healthy = True
        return result

    async def close(self) -> None:
        await self._disconnect()

    def healthy(self) -> bool:
        return self._healthy

    async def _connected(self) -> aiomqtt.Client:
        if self._client is None:
            c = self.config
            client = aiomqtt.Client(
                c.host,
                c.port,
                identifier=c.effective_client_id,
                username=c.username,
                password=c.password.get_secret_value() if c.password else None,
                timeout=c.timeout.total_seconds(),
            )
            async with asyncio.timeout(c.timeout.total_seconds()):
                await client.__aenter__()
            lost = getattr(client, "_disconnected", None)  # aiomqtt's "connection lost" future
            if isinstance(lost, asyncio.Future):  # retrieve it, so a broker going away is not logged as unhandled
                lost.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._client = client
        return self._client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
