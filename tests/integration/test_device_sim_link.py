"""The simulator's MQTT link over a real loopback socket: what it counted as sent has left.

A QoS 0 publisher cannot learn from the broker what arrived, so `MqttLink.close` must not
return while asyncio still buffers unsent bytes: the simulator's process ends right after it,
and those bytes would be lost although counted as sent (seen in the embedded bench at QoS 0,
where the broker reads slowly under backpressure). The publisher runs in its own process here,
as in the simulator, against a server that does not read at first.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

from tests.servers import free_port

TOPIC = b"sim/link-flush"
COUNT = 4_000
PAYLOAD = 2_048  # 8 MB in all: more than the loopback socket buffers hold while the server waits

PUBLISHER = textwrap.dedent(
    f"""
    import asyncio, sys
    from device_sim.link import LinkOptions, MqttLink
    from device_sim.stats import Stats
    from device_sim.wire import utf8

    async def main() -> None:
        options = LinkOptions("127.0.0.1", int(sys.argv[1]), 0, 100, 60, 5.0)
        link = await MqttLink.open(options, Stats(), "link-flush")
        for _ in range({COUNT}):
            link.publish(utf8({TOPIC.decode()!r}), b"x" * {PAYLOAD})
        await link.close(10.0)

    asyncio.run(main())
    """
)


async def test_a_qos0_publisher_that_exits_after_close_has_sent_everything() -> None:
    port = free_port()
    received = bytearray()
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read(1024))  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        await writer.drain()
        await asyncio.sleep(1.5)  # a busy broker: the publisher's buffers fill meanwhile
        while chunk := await reader.read(1 << 20):
            received.extend(chunk)
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PUBLISHER, str(port), stderr=subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
        await asyncio.wait_for(done.wait(), 30)
    finally:
        server.close()
    assert bytes(received).count(TOPIC) == COUNT
    assert received.endswith(b"\xe0\x00")  # DISCONNECT came last
