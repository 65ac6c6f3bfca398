"""`device-sim` (also `python -m device_sim`): the command line of the device simulator.

Parses options into a `SimConfig`, runs `device_sim.runner.simulate` with SIGINT/SIGTERM
wired to a clean stop (a second signal quits at once, without a summary), prints the
summary and optionally writes it as JSON. Exit status: 0 when every message sent was
acknowledged, 1 when some failed or the broker could not be used, 2 for invalid options.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from device_sim.config import BurstSpec, SimConfig
from device_sim.report import format_summary, write_json
from device_sim.runner import SimError, simulate
from device_sim.stats import Summary

PASSWORD_ENV = "DEVICE_SIM_PASSWORD"
_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}

EXAMPLES = """\
examples:
  # 100 devices, one reading every 2 s each, for a minute, QoS 1 (the default)
  device-sim --broker mqtt://127.0.0.1:1883 --devices 100 --rate 0.5 --duration 60s

  # exactly 10,000 messages of 20 readings each (JSON arrays), reproducible fleet
  device-sim --devices 50 --total-rate 500 --count 10000 --batch 20 --seed 7

  # 5 % bad messages of every kind, anomalies, some clocks 10 minutes off, a summary file
  device-sim --devices 200 --rate 1 --duration 5m --bad-ratio 0.05 --anomalies \\
             --clock-skew 10m --summary-json run.json

  # load mode: 10,000 devices over 8 connections in 2 processes, as fast as possible
  device-sim --devices 10000 --total-rate 1e6 --count 500000 --connections 8 --processes 2 --qos 0

  # TLS with a private CA and a password from the environment
  DEVICE_SIM_PASSWORD=secret device-sim --broker mqtts://broker.local:8883 --ca-file ca.pem --username sim

exit status: 0 every message sent was acknowledged; 1 some failed or the broker could not be
used; 2 invalid options. A first Ctrl-C (or SIGTERM) stops cleanly and prints the summary.
"""


def parse_broker(text: str) -> tuple[str, int, bool]:
    """`mqtt://HOST:PORT`, `mqtts://HOST:PORT` (TLS), or `HOST[:PORT]` → (host, port, tls)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "mqtt", text
    if scheme.lower() not in _SCHEMES:
        raise ValueError(f"broker {text!r}: scheme must be mqtt:// or mqtts://")
    tls = _SCHEMES[scheme.lower()]
    parts = urlsplit(f"//{rest}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or not parts.hostname:
        raise ValueError(f"broker {text!r}: expected mqtt://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker {text!r}: the port must be a number within 1..65535") from None
    return parts.hostname, port if port else (8883 if tls else 1883), tls


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="device-sim",
        description="Simulate a fleet of IoT devices publishing telemetry over MQTT to the gateway\n"
        "(topic devices/{device_id}/telemetry by default). Each device sends realistic readings:\n"
        "temperature with a daily cycle, humidity, a draining battery, a counter, a firmware version.\n"
        "Durations are written like 250ms, 30s, 5m, 1h.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    conn = parser.add_argument_group("broker")
    conn.add_argument(
        "--broker",
        metavar="URL",
        default="mqtt://127.0.0.1:1883",
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (TLS); default %(default)s",
    )
    conn.add_argument("--username", metavar="NAME", help="MQTT user name")
    conn.add_argument(
        "--password", metavar="SECRET", help=f"MQTT password (visible in `ps`; prefer the {PASSWORD_ENV} variable)"
    )
    conn.add_argument("--tls", action="store_true", help="use TLS (implied by mqtts:// and --ca-file)")
    conn.add_argument("--ca-file", metavar="PEM", type=Path, help="CA certificate(s) to verify the broker with (PEM)")
    fleet = parser.add_argument_group("fleet and traffic")
    fleet.add_argument("--devices", metavar="N", type=int, default=10, help="number of devices (default %(default)s)")
    rates = fleet.add_mutually_exclusive_group()
    rates.add_argument("--rate", metavar="R", type=float, help="messages per second per device (default 1)")
    rates.add_argument(
        "--total-rate",
        metavar="R",
        type=float,
        help="messages per second for the whole fleet; set it very high (e.g. 1e6) to send as fast as possible",
    )
    fleet.add_argument(
        "--duration", metavar="D", help="stop after this long, e.g. 60s (default: until --count or Ctrl-C)"
    )
    fleet.add_argument("--count", metavar="M", type=int, help="stop after this many messages in total")
    fleet.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default %(default)s)")
    fleet.add_argument(
        "--batch",
        metavar="K",
        type=int,
        default=1,
        help="readings per message; above 1 each message is a JSON array of that many readings (default %(default)s)",
    )
    fleet.add_argument(
        "--topic-template",
        metavar="T",
        default="devices/{device_id}/telemetry",
        help="topic per device; may use {device_id} and {site} (default %(default)s)",
    )
    fleet.add_argument(
        "--seed", metavar="S", type=int, default=0, help="same seed, same fleet and payloads (default 0)"
    )
    fleet.add_argument("--sites", metavar="N", type=int, default=1, help="number of site tags to spread devices over")
    fleet.add_argument(
        "--id-prefix", metavar="P", default="dev-", help="device id prefix (default %(default)s → dev-00042)"
    )
    faults = parser.add_argument_group("faults and anomalies")
    faults.add_argument(
        "--bad-ratio",
        metavar="F",
        type=float,
        default=0.0,
        help="fraction of bad messages, in equal "
        "shares of: malformed_json, wrong_type, out_of_range, missing_field, device_mismatch, "
        "too_large (>256 KiB), nan (a bare NaN token)",
    )
    faults.add_argument(
        "--anomalies",
        action="store_true",
        help="some devices spike above 50 °C, some flap "
        "around it, some go silent for 30 s (windows recur every 2 minutes)",
    )
    faults.add_argument(
        "--clock-skew",
        metavar="D",
        default="0s",
        help="shift the timestamps of 10%% of the devices by plus or minus this much, e.g. 10m",
    )
    faults.add_argument(
        "--burst",
        nargs="?",
        const="5,10s,1s",
        metavar="FACTOR,EVERY,LENGTH",
        help="periodic bursts: the rate times FACTOR for LENGTH every EVERY (default 5,10s,1s)",
    )
    faults.add_argument("--churn", metavar="D", help="every this long, reconnect a share of the connections, e.g. 10s")
    faults.add_argument(
        "--churn-fraction",
        metavar="F",
        type=float,
        default=0.1,
        help="share reconnected per churn round (default %(default)s)",
    )
    load = parser.add_argument_group("load mode")
    load.add_argument(
        "--connections",
        metavar="K",
        type=int,
        help="share K connections among all devices (load mode; "
        "the default above 2000 devices, with 16); without it each device has its own",
    )
    load.add_argument("--processes", metavar="P", type=int, default=1, help="fan the load mode out over P processes")
    load.add_argument(
        "--preload",
        action="store_true",
        help="generate (pre-serialise) the run's messages before the clock starts, up to 1,000,000"
        " messages or 256 MiB, so that a flat-out run spends its CPU on sending; the start waits for it",
    )
    load.add_argument(
        "--inflight",
        metavar="N",
        type=int,
        default=1000,
        help="unacknowledged QoS 1 messages per connection (default %(default)s)",
    )
    out = parser.add_argument_group("output and timing")
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="status line on stderr every second (default: only when stderr is a terminal)",
    )
    out.add_argument(
        "--summary-json", metavar="PATH", type=Path, help="also write the final summary as JSON to this file"
    )
    out.add_argument("--drain-timeout", metavar="D", default="5s", help="wait this long for the last acknowledgements")
    out.add_argument("--connect-timeout", metavar="D", default="10s", help="give up connecting after this long")
    add("--version", action="version", version="device-sim 0.1.0")
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the options describe; ValueError (or ValidationError) when they cannot work."""
    host, port, tls = parse_broker(args.broker)
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV)
    values: dict[str, Any] = {
        "host": host,
        "port": port,
        "tls": tls or args.tls,
        "ca_file": args.ca_file,
        "username": args.username,
        "password": password,
        "devices": args.devices,
        "rate": args.rate,
        "total_rate": args.total_rate,
        "duration": args.duration,
        "count": args.count,
        "qos": args.qos,
        "batch": args.batch,
        "topic_template": args.topic_template,
        "seed": args.seed,
        "sites": args.sites,
        "id_prefix": args.id_prefix,
        "bad_ratio": args.bad_ratio,
        "anomalies": args.anomalies,
        "clock_skew": args.clock_skew,
        "burst": BurstSpec.parse(args.burst) if args.burst is not None else None,
        "churn": args.churn,
        "churn_fraction": args.churn_fraction,
        "connections": args.connections,
        "processes": args.processes,
        "preload": args.preload,
        "inflight": args.inflight,
        "drain_timeout": args.drain_timeout,
        "connect_timeout": args.connect_timeout,
        "progress": args.progress,
    }
    return SimConfig.model_validate(values)


async def _run(config: SimConfig) -> Summary:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and main is not None:
            main.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return await simulate(config, stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        parser.error(problems)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        summary = asyncio.run(_run(config))
    except SimError as exc:
        print(f"device-sim: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print("device-sim: stopped at once (second signal); no summary", file=sys.stderr)
        return 1
    print(format_summary(summary), flush=True)
    if args.summary_json is not None:
        write_json(summary, args.summary_json)
    return 0 if summary.failed == 0 else 1
