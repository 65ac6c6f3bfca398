"""Gateway-side checks on every message, before it is decoded (defence in depth behind the broker).

`Guard.check(raw)` returns None (go on) or the `DeadLetter` that replaces the message, with
one of these codes (the `reason` label of `gateway_messages_invalid_total`):

* `too_deep`: the topic has more than `security.max_topic_levels` levels (checked first, so
  that a topic of thousands of levels costs one count of `/`).
* `identity_mismatch`: the message came from an authenticated *device* on the embedded
  broker (`AuthenticatedMessage`) and the topic's `{device_id}` placeholder is not its
  identity. Operators and anonymous clients are not checked; whether the payload's device
  id agrees with the topic is the decoder's check (`device_mismatch`).
* `rate_limited`: the device's token bucket is empty (`security.rate_limit`), also counted
  by `gateway_rate_limited_total`. The bucket key is the authenticated identity, else the
  topic's device id, else the MQTT client id, else the topic.

The dead letter keeps the payload, topic, client id and receive time, like the decoder's.
Never raises for any topic or payload.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from operator import attrgetter, methodcaller

from gateway.core.message import DeadLetter, RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.topics import DEVICE_ID_TAG, TopicRouter
from gateway.security.config import SecurityConfig
from gateway.security.identity import AuthenticatedMessage
from gateway.security.ratelimit import TokenBuckets

SOURCE = "security"
_topic, _slashes = attrgetter("topic"), methodcaller("count", "/")


class Guard:
    def __init__(
        self,
        config: SecurityConfig,
        router: TopicRouter,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_levels = config.max_topic_levels
        self._router = router
        self._metrics = metrics
        self._clock = clock
        rl = config.rate_limit
        self._buckets = TokenBuckets(rl.messages_per_second, rl.burst, rl.max_devices) if rl is not None else None

    def passes_all(self, raws: Sequence[RawMessage]) -> bool:
        """True when `check` would pass every message of `raws` and count nothing: no rate limit
        is set, no message is from an authenticated client, no topic is too deep. False: call
        `check` on each."""
        if self._buckets is not None or not raws:
            return False
        if max(map(_slashes, map(_topic, raws))) + 1 > self._max_levels:
            return False
        return not any(issubclass(kind, AuthenticatedMessage) for kind in set(map(type, raws)))

    def check(self, raw: RawMessage) -> DeadLetter | None:
        topic = raw.topic
        levels = topic.count("/") + 1
        if levels > self._max_levels:
            return _letter(raw, "too_deep", f"topic has {levels} levels, more than the limit of {self._max_levels}")
        identity = raw.identity if isinstance(raw, AuthenticatedMessage) else None
        device = identity if identity is not None and identity.restricted and identity.role == "device" else None
        topic_device: str | None = None
        if device is not None or self._buckets is not None:
            matched = self._router.match(topic)
            topic_device = matched[1].get(DEVICE_ID_TAG) if matched is not None else None
        if device is not None and topic_device is not None and topic_device != device.name:
            return _letter(
                raw,
                "identity_mismatch",
                f"the topic names device {topic_device!r} but the client authenticated as {device.name!r}",
            )
        if self._buckets is not None:
            key = (identity.name if identity is not None and identity.restricted else None) or topic_device
            key = key or raw.client_id or topic
            if not self._buckets.allow(key, self._clock()):
                self._metrics.rate_limited.inc()
                return _letter(raw, "rate_limited", f"device {key!r} is over its rate limit")
        return None


def _letter(raw: RawMessage, code: str, reason: str) -> DeadLetter:
    return DeadLetter(
        topic=raw.topic,
        payload=raw.payload,
        reason=reason,
        source=SOURCE,
        received_ns=raw.received_ns,
        client_id=raw.client_id,
        code=code,
    )
