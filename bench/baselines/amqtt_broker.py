"""Baseline broker: a standalone amqtt broker (the library the embedded ingress is built on),
with no plugins, anonymous, on 127.0.0.1.

    python -m bench.baselines.amqtt_broker --port P

Prints `ready` once it listens, runs until SIGTERM/SIGINT. Together with an aiomqtt
subscriber that only counts (`bench.baselines.aiomqtt_count`) it measures amqtt's own
publish → subscribe rate: the ceiling the embedded gateway is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from amqtt.broker import Broker


async def serve(port: int) -> None:
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "max_connections": 10_000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    print("ready", flush=True)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(a.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
