"""`Decoder.decode_singles`: many one-object messages decoded at once change nothing.

Whenever it answers, its readings equal, one per message and in every attribute (field value
types and key order included), what `decode` makes of each message alone; when any message is
not plainly valid it answers None, and the ingest path decodes the messages one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.core.message import RawMessage
from gateway.validation.decode import Decoder
from tests.unit.test_validation_fastpath import (
    BASES,
    BATCH_STAMPS,
    CHANGES,
    DELETE,
    LIMITS,
    NOW,
    TIGHT_SKEW,
    _decoder,
    dump,
    outcome,
)

# Per route: the topic of device i, and what its element must say to agree with that topic.
FAMILIES: dict[str, Callable[[int], tuple[str, dict[str, Any]]]] = {
    "devices/d1/telemetry": lambda i: (f"devices/d{i}/telemetry", {}),
    "sites/s1/devices/d9/telemetry": lambda i: (f"sites/s{i % 2}/devices/d{i}/telemetry", {"device_id": f"d{i}"}),
    "gateways/g1/tanks": lambda i: (f"gateways/g{i % 2}/tanks", {"id": f"t{i}"}),
    "legacy/x": lambda i: (f"legacy/x{i}", {"device_id": f"d{i}"}),
    "e/s1/d1": lambda i: (f"e/s1/d{i}", {}),
    "e2/d1": lambda i: (f"e2/d{i}", {}),
    "c/k1": lambda i: (f"c/k{i % 2}", {"dev": f"x{i}"}),
    "c2/a/b": lambda i: (f"c2/a/b{i}", {"dev": f"x{i}"}),
}
STAMP_FIELD = {"gateways/g1/tanks": "time", "c/k1": "t", "c2/a/b": "t"}
DECODERS = [_decoder(fast=True, **limits) for limits in LIMITS]
RECEIVED = [NOW, NOW + 700_000_000, NOW - 900_000_000]  # apart by more than TIGHT_SKEW allows


def message(family: str, device: int, stamp: object = None, received: int = NOW, **changes: Any) -> RawMessage:
    topic, agree = FAMILIES[family](device)
    element = {**BASES[family], **agree}
    if stamp is DELETE:
        element.pop(STAMP_FIELD.get(family, "ts"), None)
    elif stamp is not None:
        element[STAMP_FIELD.get(family, "ts")] = stamp
    for name, value in changes.items():
        if value is DELETE:
            element.pop(name, None)
        else:
            element[name] = value
    return RawMessage(topic, dump(element), qos=0, received_ns=received)


def one_by_one(decoder: Decoder, raws: list[RawMessage]) -> list[Any]:
    """Each message decoded alone (which also fills the decoder's topic cache)."""
    return [outcome(decoder.decode(raw)) for raw in raws]


def assert_same_or_none(decoder: Decoder, raws: list[RawMessage]) -> bool:
    """decode_singles agrees with decoding one by one; True if it answered."""
    alone = one_by_one(decoder, raws)
    together = decoder.decode_singles(raws)
    if together is None:
        return False
    assert [outcome_of(r) for r in together] == alone
    assert [r.received_ns for r in together] == [raw.received_ns for raw in raws]
    return True


def outcome_of(reading: Any) -> Any:
    from gateway.validation.decode import DecodeResult

    return outcome(DecodeResult([reading], []))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(FAMILIES)), min_size=1, max_size=2), st.data())
def test_mostly_valid_singles_decode_as_one_by_one(families: list[str], data: st.DataObject) -> None:
    """Messages of one or two routes, many devices, each its own timestamp form and receive
    time, now and then a changed value, key or tag."""
    raws = []
    for _ in range(data.draw(st.integers(1, 8))):
        changes: dict[str, Any] = {}
        if data.draw(st.integers(0, 5)) == 0:
            changes = dict(data.draw(CHANGES))
        family = data.draw(st.sampled_from(families))
        stamp, received = data.draw(BATCH_STAMPS), data.draw(st.sampled_from(RECEIVED))
        raws.append(message(family, data.draw(st.integers(0, 3)), stamp, received, **changes))
    answered = [assert_same_or_none(decoder, raws) for decoder in DECODERS]
    event(f"decoded together by {sum(answered)} of {len(DECODERS)} decoders")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_plainly_valid_singles_of_many_devices_are_decoded_together(family: str) -> None:
    decoder = _decoder(fast=True, **TIGHT_SKEW)
    seconds = NOW // 10**9
    stamps: list[object] = [NOW // 10**6, seconds, NOW, "2023-11-14T22:13:20Z", float(seconds - 1), DELETE]
    raws = [message(family, i, stamp) for i, stamp in enumerate(stamps)]
    assert assert_same_or_none(decoder, raws)
    same_form = [message(family, i, NOW // 10**6 - i) for i in range(5)]
    assert assert_same_or_none(decoder, same_form)


def test_each_message_is_held_to_the_skew_of_its_own_receive_time() -> None:
    decoder = _decoder(fast=True, **TIGHT_SKEW)  # up to 1 s old, none from the future
    early, late = NOW - 900_000_000, NOW
    fits = [
        message("devices/d1/telemetry", 1, NOW // 10**6 - 950, early),
        message("devices/d1/telemetry", 2, NOW // 10**6, late),
    ]
    assert assert_same_or_none(decoder, fits)
    too_old_for_its_own = message("devices/d1/telemetry", 3, (early - 1_000_000_001) // 10**6, late)
    ahead_of_its_own = message("devices/d1/telemetry", 4, (early + 1_000_000) // 10**6, early)
    for odd in (too_old_for_its_own, ahead_of_its_own):
        assert not assert_same_or_none(decoder, [*fits, odd])


@pytest.mark.parametrize(
    ("family", "odd"),
    [
        ("legacy/x", {"device_id": ""}),
        ("legacy/x", {"device_id": DELETE}),
        ("sites/s1/devices/d9/telemetry", {"device_id": "d8"}),
        ("e/s1/d1", {"site": "s2"}),
        ("c/k1", {"k": "k7"}),
        ("e2/d1", {"site": None}),
        ("e2/d1", {"zone": ""}),
        ("c/k1", {"extra": 1}),
        ("c/k1", {"dev": DELETE}),
        ("devices/d1/telemetry", {"ts": 0}),
        ("devices/d1/telemetry", {"temperature": math.inf}),
        ("devices/d1/telemetry", {"temperature": "hot"}),
    ],
    ids=repr,
)
def test_one_odd_message_sends_them_all_the_one_by_one_way(family: str, odd: dict[str, Any]) -> None:
    decoder = _decoder(fast=True)
    raws = [message(family, 1), message(family, 2, **odd), message(family, 3)]
    assert not assert_same_or_none(decoder, raws)


def test_unseen_topics_malformed_json_oversize_and_arrays_are_not_decoded_together() -> None:
    decoder = _decoder(fast=True, max_payload_bytes=200)
    good = [message("devices/d1/telemetry", i) for i in range(2)]
    one_by_one(decoder, good)
    assert decoder.decode_singles(good) is not None
    unseen = message("devices/d1/telemetry", 99)
    assert decoder.decode_singles([*good, unseen]) is None  # its route is not known yet
    for odd in (
        b"{not json",
        b'{"temperature": 1.0, "pad": "' + b"x" * 300 + b'"}',
        orjson.dumps([BASES["devices/d1/telemetry"]]),
    ):
        raw = RawMessage(good[0].topic, odd, received_ns=NOW)
        assert decoder.decode_singles([*good, raw]) is None
    assert decoder.decode_singles([]) is None


def test_singles_from_two_schemas_are_not_decoded_together() -> None:
    decoder = _decoder(fast=True)
    assert not assert_same_or_none(decoder, [message("devices/d1/telemetry", 1), message("gateways/g1/tanks", 1)])


def test_a_chunk_holding_a_batch_is_not_parsed_before_the_one_by_one_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch payloads (JSON arrays) are declined before parsing: they would be parsed twice."""
    import gateway.validation.decode as decode_module

    decoder = _decoder(fast=True)
    good = [message("devices/d1/telemetry", i) for i in range(2)]
    batch = RawMessage(good[0].topic, orjson.dumps([BASES["devices/d1/telemetry"]] * 3), received_ns=NOW)
    one_by_one(decoder, [*good, batch])
    parsed: list[bytes] = []

    class CountingJson:
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def loads(payload: bytes) -> Any:
            parsed.append(payload)
            return orjson.loads(payload)

    monkeypatch.setattr(decode_module, "orjson", CountingJson)
    assert decoder.decode_singles([*good, batch]) is None and parsed == []
    assert decoder.decode_singles(good) is not None and len(parsed) == 2
