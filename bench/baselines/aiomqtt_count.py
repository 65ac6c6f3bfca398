"""Baseline: the raw aiomqtt receive-only ceiling. A subscriber that only counts.

    python -m bench.baselines.aiomqtt_count --port P --topic 'devices/+/telemetry' --qos 1 --count N

It subscribes, prints `ready` on stdout, then counts messages through aiomqtt's public
iterator (`client.messages`, aiomqtt acknowledges QoS 1 itself) and does nothing else with
them. When `--count` messages arrived (or `--timeout` passed) it prints one JSON line:
`{"received": n, "first_ns": t, "last_ns": t}` (time.time_ns() at the first and last message)
and exits 0 if all arrived, 1 otherwise. Any work a real consumer does (decoding, storing)
comes on top of this: it is the most an aiomqtt-based consumer can receive on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

import aiomqtt
import orjson


async def count(port: int, topic: str, qos: int, expected: int, limit_s: float, client_id: str) -> dict[str, int]:
    received = first = last = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=client_id, max_queued_incoming_messages=0, clean_session=True
    ) as client:
        await client.subscribe(topic, qos=qos)
        print("ready", flush=True)

        async def consume() -> None:
            nonlocal received, first, last
            async for _message in client.messages:
                received += 1
                if received == 1:
                    first = time.time_ns()
                if received >= expected:
                    last = time.time_ns()
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consume(), limit_s)
        if received < expected:
            last = time.time_ns()
    return {"received": received, "first_ns": first, "last_ns": last}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all messages")
    p.add_argument("--client-id", default=f"bench-aiomqtt-{time.time_ns()}")
    a = p.parse_args(argv)
    result = asyncio.run(count(a.port, a.topic, a.qos, a.count, a.timeout, a.client_id))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0 if result["received"] >= a.count else 1


if __name__ == "__main__":
    sys.exit(main())
