"""The client ingress's hot path: `Gateway.handle` for a batch of MQTT messages.

`handle_batch(gateway, messages)` does for each message, in order, what `Gateway.handle`
does (own forwarders skipped, guard, decode and validation, metrics), but gathers the
readings and dead letters of the whole batch into one bus publish per topic: with the
durable bus that is one group commit per batch instead of one per message.

Guarantee (the ingress contract, for the batch): when it returns, every reading and dead
letter of every message is held by the bus, so the ingress may acknowledge them all; when it
raises, none may be acknowledged (some may already be on the bus: at least once). A metadata
message of the cache-invalidation processor goes through `Gateway.handle` on its own, after
what precedes it was published, so the order of the batch is kept.

`hand_over_batch` is the same in two steps (the client ingress pipelines with it): it returns
once the batch's messages are handed to the bus (`Bus.hand_over`: held, in call order) with a
future that resolves when `handle_batch` would have returned, or fails with its error. So the
next batch can be decoded and handed over, in order, while this one commits.

Bus messages: a publish's readings are one message per device run (`telemetry_messages`).
A chunk of plainly valid single-reading publishes (`SINGLES_CHUNK`) is one message of
several devices (`singles_messages`) unless a telemetry subscription orders by key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from itertools import groupby, repeat
from operator import add, attrgetter
from typing import TYPE_CHECKING, Any

from gateway.core.bus import OutgoingMessage, resolved
from gateway.core.message import RawMessage, Reading, ReadingBatch
from gateway.settings import DEADLETTER_TOPIC, TELEMETRY_TOPIC

if TYPE_CHECKING:
    from gateway.app import Gateway


SINGLES_CHUNK = 64
"""Messages decoded together by `Decoder.decode_singles`: a message that is not plainly valid
sends only its chunk the message-by-message way."""
_payload, _device_id, _client_id = attrgetter("payload"), attrgetter("device_id"), attrgetter("client_id")

READING_MEMORY = 600
"""Bytes a decoded `Reading` holds beyond its share of the payload (objects, dicts, strings),
measured with tracemalloc for readings of 6 fields and 2 tags: about 760 bytes each, of
which 150 are payload."""


def telemetry_messages(readings: list[Reading], payload_size: int) -> list[OutgoingMessage]:
    """The bus messages of one publish's readings: one per run of readings of the same device
    (a `ReadingBatch` when the run has several).

    A message's `size` (what the subscriptions' `max_outstanding_bytes` and `batch.max_bytes`
    count) estimates the memory its readings hold: their share of the payload plus
    `READING_MEMORY` each. So those limits bound memory and write sizes alike whether devices
    publish one reading or a thousand per message.
    """
    if len(readings) == 1:
        r = readings[0]
        return [OutgoingMessage(r, payload_size + READING_MEMORY, r.device_id)]
    per_reading = payload_size // len(readings) + READING_MEMORY
    out: list[OutgoingMessage] = []
    for device, run in groupby(readings, key=attrgetter("device_id")):
        group = list(run)
        data = group[0] if len(group) == 1 else ReadingBatch(group)
        out.append(OutgoingMessage(data, per_reading * len(group), device))
    return out


def singles_messages(singles: list[Reading], chunk: Sequence[RawMessage], shared: bool) -> list[OutgoingMessage]:
    """The bus messages for the readings of a chunk of single-reading publishes (`chunk[i]`
    gave `singles[i]`), which may be of several devices.

    `shared` (`Gateway.telemetry_unordered`: no telemetry subscription orders by key): one
    `ReadingBatch` message without an ordering key, so bus bookkeeping (encoding, the durable
    log's record, lease, ack, paging) is paid once per chunk instead of once per publish: a
    sixth to a quarter of the gateway's CPU per single reading. Else one message per publish,
    keyed by its device, as an ordered subscription needs. Either way the sizes are what the
    chunk's messages count one by one (`telemetry_messages`).
    """
    sizes = list(map(add, map(len, map(_payload, chunk)), repeat(READING_MEMORY)))
    if shared:
        return [OutgoingMessage(ReadingBatch(singles), sum(sizes))]
    return list(map(OutgoingMessage, singles, sizes, map(_device_id, singles)))


async def handle_batch(gw: Gateway, raws: Sequence[RawMessage]) -> None:
    """Decode `raws` and put their readings and dead letters on the bus (see the module docstring)."""
    await (await hand_over_batch(gw, raws))


async def hand_over_batch(gw: Gateway, raws: Sequence[RawMessage]) -> asyncio.Future[Any]:
    """`handle_batch` up to the bus's hand-over; the future resolves once it would have returned."""
    readings: list[OutgoingMessage] = []
    dead: list[OutgoingMessage] = []
    held: list[asyncio.Future[None]] = []
    valid = n_readings = 0
    meta, detector, own = gw.processors.meta, gw.processors.detector, gw._own_clients
    plain = not (meta and detector is not None)  # else a metadata message needs a way of its own
    for start in range(0, len(raws), SINGLES_CHUNK):
        chunk = raws[start : start + SINGLES_CHUNK]
        ours = own and not own.isdisjoint(map(_client_id, chunk))  # publishes of our own forwarders
        singles = gw.decoder.decode_singles(chunk) if plain and not ours and gw.guard.passes_all(chunk) else None
        if singles is not None:  # one plainly valid reading per message: as decode would give them
            readings += singles_messages(singles, chunk, gw.telemetry_unordered)
            valid += len(singles)
            n_readings += len(singles)
            continue
        for raw in chunk:
            if own and raw.client_id in own:
                continue
            if meta and detector is not None and meta.device_of(raw.topic) is not None:
                await _hand_over(gw, readings, dead, held)
                for future in held:  # what precedes it is published, as Gateway.handle would see it
                    await future
                held.clear()
                await gw.handle(raw)
                continue
            refused = gw.guard.check(raw)
            if refused is not None:
                gw.metrics.messages_invalid.labels(refused.code).inc()
                dead.append(OutgoingMessage(refused, len(refused.payload) + 256))
                continue
            result = gw.decoder.decode(raw)
            if result.readings:
                readings += telemetry_messages(result.readings, len(raw.payload))
                n_readings += len(result.readings)
            valid += not result.rejects
            for rejection in result.rejects:
                gw.metrics.messages_invalid.labels(rejection.code).inc()
                dead.append(OutgoingMessage(rejection.dead_letter, len(rejection.dead_letter.payload) + 256))
    await _hand_over(gw, readings, dead, held)
    gw.metrics.messages_valid.inc(valid)
    gw.metrics.readings_valid.inc(n_readings)
    if len(held) == 1:
        return held[0]
    return asyncio.gather(*held) if held else resolved()


async def _hand_over(
    gw: Gateway, readings: list[OutgoingMessage], dead: list[OutgoingMessage], held: list[asyncio.Future[None]]
) -> None:
    """Hand both lists over (telemetry first), add their commit futures to `held`, empty them."""
    if readings:
        held.append(await gw.bus.hand_over(TELEMETRY_TOPIC, readings))
        readings.clear()
    if dead:
        held.append(await gw.bus.hand_over(DEADLETTER_TOPIC, dead))
        dead.clear()
