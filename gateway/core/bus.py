"""The internal publish/subscribe bus: the contract every backend fulfils.

Semantics, modelled on cloud Pub/Sub:

* A **topic** has named **subscriptions**. `publish` gives every subscription of the topic
  its own copy of each message (fan-out). Publishing to a topic with no subscription
  stores nothing and says so in its return value (0 subscriptions reached).
* Several **consumers** of one subscription share its messages (work queue): each message
  is leased to one consumer at a time.
* A leased message must be **acked** (done, never delivered again) or **nacked** (deliver
  again after the subscription's backoff, or after an explicit delay) before its **ack
  deadline**. A message whose deadline passes is redelivered as if nacked. `extend` pushes
  the deadline of leased messages forward (a consumer that is still working on them, for
  instance retrying a write, calls it).
* Each delivery counts an **attempt**. A message nacked or expired after
  `max_delivery_attempts` attempts is published to the subscription's `dead_letter_topic`
  (as a `DeadLetter`) and removed.
* With `ordering: true`, messages with the same `ordering_key` are delivered one batch at a
  time and in publish order: the next message of a key is not leased while an earlier one of
  the same key is outstanding.
* **Flow control**: a subscription holds at most `max_outstanding_messages` messages and
  `max_outstanding_bytes` bytes (leased or waiting) in memory. On the memory backend
  `publish` waits while any subscription of the topic is full: this is how backpressure
  reaches the ingress. A durable backend may keep the rest on disk instead and wait only when
  its disk budget is spent (`gateway.bus.sqlite`). Nothing is dropped silently.
* **Batching**: `pull` returns up to `batch.max_messages` messages / `batch.max_bytes`
  bytes, waiting at most `batch.max_latency` after the first message is available.

Not promised by the memory backend: survival across a process restart. That is the job of
a durable backend (same contract).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from gateway.core.duration import Duration


class BatchPolicy(BaseModel):
    """How many messages a consumer receives at once, and how long it waits for them."""

    model_config = ConfigDict(extra="forbid")

    max_messages: PositiveInt = Field(1000, description="Most messages in one batch.")
    max_bytes: PositiveInt = Field(4 * 1024 * 1024, description="Most payload bytes in one batch.")
    max_latency: Duration = Field(
        timedelta(milliseconds=200), description="Longest wait for a batch to fill once it has a message."
    )


class SubscriptionConfig(BaseModel):
    """One subscription: delivery, retry, ordering, flow control and batching settings."""

    model_config = ConfigDict(extra="forbid")

    name: str
    topic: str
    ack_deadline: Duration = Field(timedelta(seconds=30), description="Redeliver a leased message not acked by then.")
    min_backoff: Duration = Field(timedelta(milliseconds=100), description="First redelivery delay after a nack.")
    max_backoff: Duration = Field(timedelta(seconds=60), description="Cap of the exponential redelivery delay.")
    max_delivery_attempts: PositiveInt = Field(5, description="Attempts before the message is dead-lettered.")
    dead_letter_topic: str | None = Field(
        "deadletter", description="Where exhausted messages go; null drops them (counted)."
    )
    ordering: bool = Field(False, description="Deliver messages of one ordering key (device) in order.")
    max_outstanding_messages: PositiveInt = Field(100_000, description="Messages held before publishers wait.")
    max_outstanding_bytes: PositiveInt = Field(64 * 1024 * 1024, description="Bytes held before publishers wait.")
    batch: BatchPolicy = Field(default_factory=BatchPolicy)


@dataclass(slots=True)
class OutgoingMessage:
    """What a publisher hands to the bus. `size` is used for flow control (bytes)."""

    data: Any
    size: int
    ordering_key: str | None = None


@dataclass(slots=True)
class ReceivedMessage:
    """A leased message. `ack_id` is unique within its subscription."""

    ack_id: int
    data: Any
    size: int
    ordering_key: str | None
    attempt: int
    publish_time_ns: int


@dataclass(slots=True)
class SubscriptionStats:
    """A snapshot for metrics and readiness."""

    backlog: int
    backlog_bytes: int
    outstanding_leases: int
    oldest_unacked_age_s: float
    delivered: int
    acked: int
    nacked: int
    expired: int
    dead_lettered: int


class Bus(Protocol):
    """A bus backend. All methods are called from the event loop thread."""

    def create_topic(self, name: str) -> None:
        """Declare a topic (idempotent)."""

    def create_subscription(self, config: SubscriptionConfig) -> None:
        """Declare a subscription on an existing topic (idempotent for equal config)."""

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> int:
        """Give each message to every subscription of `topic`; wait while one is full.

        Returns the number of subscriptions reached. When it returns, the messages are
        held by the bus (in memory, or durably for a durable backend).
        """

    async def hand_over(self, topic: str, messages: Sequence[OutgoingMessage]) -> asyncio.Future[None]:
        """`publish` in two steps: returns once the messages are held, in call order (waiting
        while full, as `publish`), with a future resolved when `publish` would have returned
        (durably stored on a durable backend; at once in memory) or failed with its error.
        A publisher may thus hand over its next messages while the previous ones commit.
        """

    async def pull(self, subscription: str) -> list[ReceivedMessage]:
        """Lease the next batch (at least one message) according to the batch policy."""

    def flush(self) -> None:
        """From now on, `pull` returns a batch as soon as it holds a message, without
        waiting for `max_latency` (called when draining on shutdown)."""

    def ack(self, subscription: str, ack_ids: Sequence[int]) -> None:
        """Mark messages done. Unknown or already-acked ids are ignored."""

    def nack(self, subscription: str, ack_ids: Sequence[int], delay: timedelta | None = None) -> None:
        """Redeliver after `delay`, or after the subscription's exponential backoff when None."""

    def extend(self, subscription: str, ack_ids: Sequence[int]) -> None:
        """Restart the ack deadline of still-leased messages."""

    def stats(self, subscription: str) -> SubscriptionStats:
        """Current counters of one subscription."""

    def subscriptions(self) -> list[str]:
        """Names of all subscriptions."""

    async def close(self) -> None:
        """Stop background work (deadline timers). Pending `pull` calls raise `BusClosed`."""


def resolved() -> asyncio.Future[None]:
    """A future already resolved (`hand_over` when nothing is left to wait for)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


class BusClosed(Exception):
    """Raised by `pull` (and `publish`) once the bus is closed."""
