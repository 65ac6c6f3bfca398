"""The durable bus stores the processors' events exactly (alerts, invalidations)."""

from __future__ import annotations

import pytest

from gateway.bus import codec
from gateway.processors.events import AlertEvent, Invalidation


@pytest.mark.parametrize(
    "event",
    [
        AlertEvent("a1", "hot", "firing", "dev-1", "crit", "hot", {"team": "ops"}, {"site": "x"}, 41.5, 1, 2, 3),
        AlertEvent("a1", "hot", "resolved", "dev-1", "", "", {}, {}, None, 1, 2, 0),
        Invalidation("device", ("d1", "d2"), ("meta", "admin"), ("firmware",), 10, 5, 6, {"note": [1, "x"]}),
        Invalidation("device", ("d1",)),
    ],
)
def test_event_round_trips_with_its_type(event: object) -> None:
    back = codec.decode(codec.encode(event))
    assert back == event and type(back) is type(event)


def test_unknown_registered_name_is_a_codec_error() -> None:
    with pytest.raises(codec.CodecError, match="unknown type"):
        codec.decode(b'T["nope.v1", 1]')


def test_a_name_cannot_be_taken_twice() -> None:
    with pytest.raises(ValueError, match="already registered"):
        codec.register(dict, "alert.v1", lambda x: x, lambda x: x)


def test_registered_converter_must_return_plain_json() -> None:
    class Odd:
        pass

    codec.register(Odd, "test.odd.v1", lambda _: {1, 2}, lambda _: Odd())
    with pytest.raises(codec.CodecError):
        codec.encode(Odd())
