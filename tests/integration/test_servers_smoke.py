"""The test servers themselves work: a point written over line protocol is exported back."""

import time
import urllib.request

import pytest

from tests.servers import Mosquitto, VictoriaMetrics

pytestmark = pytest.mark.integration


def test_victoria_accepts_line_protocol(victoria: VictoriaMetrics) -> None:
    ts = time.time_ns()
    req = urllib.request.Request(
        victoria.url + "/api/v2/write?precision=ns", data=f"smoke,device_id=d1 value=1.5 {ts}".encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204
    assert victoria.wait_for_count('smoke_value{device_id="d1"}', 1) == 1


def test_mosquitto_restarts_on_same_port(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    mosquitto.stop()
    mosquitto.start()
    assert mosquitto.port == port
