"""`HeldMessages`: the sink runner's ledger of pulled, unsettled messages (no I/O)."""

from __future__ import annotations

from gateway.core.bus import ReceivedMessage
from gateway.core.held_messages import HeldMessages
from gateway.core.message import DeadLetter, Reading, ReadingBatch


def reading(device: str, received_ns: int, time_ns: int = 1) -> Reading:
    return Reading("env", device, {"device_id": device}, {"t": 1.0}, time_ns, received_ns)


def message(ack_id: int, data: object) -> ReceivedMessage:
    return ReceivedMessage(ack_id, data, 100, None, 1, 0)


def test_single_readings_are_their_own_items_and_due_once_settled() -> None:
    held = HeldMessages()
    batch = [message(1, reading("a", 10)), message(2, reading("b", 20))]
    ids, items, owners = held.take(batch)
    assert ids == [1, 2] and items == [m.data for m in batch] and owners == batch
    assert held and held.ack_ids == {1, 2}
    assert held.stored_watermark() == 9  # just below the oldest held reading
    assert held.settle([batch[1]]) == [2]
    assert held.stored_watermark() == 9  # reading 10 is still held
    assert held.settle([batch[0]]) == [1]
    assert not held and held.stored_watermark() == 20


def test_a_batch_is_due_only_when_all_its_readings_are_settled() -> None:
    held = HeldMessages()
    rb = ReadingBatch([reading("a", 30, t) for t in (1, 2, 3)])  # one publish: one receive time
    other = DeadLetter(topic="t", payload=b"x", reason="r", source="s", received_ns=0)
    batch = [message(7, rb), message(8, other)]
    ids, items, owners = held.take(batch)
    assert ids == [7, 8] and items == [*rb.readings, other] and owners == [batch[0]] * 3 + [batch[1]]
    assert held.open_batches == 1 and held.stored_watermark() == 29
    assert held.settle([batch[0], batch[1]]) == [8]  # one of three readings: the batch stays
    assert held.ack_ids == {7} and held.stored_watermark() == 29
    assert held.settle([batch[0], batch[0]]) == [7]
    assert not held and held.open_batches == 0 and held.stored_watermark() == 30


def test_released_messages_are_forgotten_unsettled_and_the_watermark_never_falls() -> None:
    held = HeldMessages()
    rb = ReadingBatch([reading("a", 50, t) for t in (1, 2)])
    ids, _, owners = held.take([message(3, rb)])
    held.settle(owners[:1])
    held.release(ids)
    assert not held and held.open_batches == 0 and held.stored_watermark() == 50
    held.take([message(4, reading("b", 40))])  # an older redelivery lands behind the mark
    assert held.stored_watermark() == 50
