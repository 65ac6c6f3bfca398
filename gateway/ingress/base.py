"""The ingress contract: how MQTT publishes enter the gateway.

An ingress hands every publish it receives to a `MessageHandler`, one at a time per
connection, in the order the connection delivered them:

* When the handler returns, the message is safely on the internal bus; the ingress may then
  acknowledge it to whoever sent it (what each implementation can actually promise about
  the acknowledgement is in its module docstring).
* A slow handler slows the ingress down (backpressure): an ingress never buffers without
  bound and never drops a message because the handler is slow.
* A handler that raises is logged and its message is not acknowledged.

Two implementations: `gateway.ingress.embedded.EmbeddedIngress` (an MQTT broker inside the
gateway) and `gateway.ingress.client.ClientIngress` (a subscriber of an external broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from gateway.core.message import RawMessage

MessageHandler = Callable[[RawMessage], Awaitable[None]]
# Several messages of one connection, in order: the same contract as MessageHandler for each
# (an ingress may offer it to amortise the bus publish; when it raises, none is acknowledged).
BatchHandler = Callable[[Sequence[RawMessage]], Awaitable[None]]
# A BatchHandler in two steps, for pipelining: the call returns once the batch is handed over
# (later batches may then be handed over, in order), with a future that resolves when the
# BatchHandler would have returned (the batch may be acknowledged) or fails with its error.
StagedBatchHandler = Callable[[Sequence[RawMessage]], Awaitable[asyncio.Future[Any]]]


class IngressError(Exception):
    """A fatal setup error; the message is for the operator and names the config key."""


class Ingress(Protocol):
    """An MQTT ingress.

    Lifecycle: `run(handler)` starts listening or connecting and returns only after
    `stop()`; fatal setup errors make it raise `IngressError`. `wait_started()` returns once
    the ingress listens / is connected for the first time, or raises that same setup error.
    `stop()` stops taking new messages; when it returns, no further handler call happens.
    `connected` is True while listening (embedded) or connected to the broker (client).
    """

    name: str

    @property
    def connected(self) -> bool: ...

    async def run(self, handler: MessageHandler) -> None: ...

    async def wait_started(self) -> None: ...

    async def stop(self) -> None: ...
