"""The `gateway` command line: run, check-config, query, deadletter, seek, alerts, passwd.

Exit codes: 0 success; 1 runtime failure; 2 unusable configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import replay_cli
from gateway.config_errors import ConfigError
from gateway.processors import alerts_cli
from gateway.security import passwd_cli
from gateway.settings import DEFAULT_CONFIG_PATH, GatewaySettings, load_settings

DESCRIPTION = """\
IoT telemetry gateway: devices publish sensor readings over MQTT; the gateway validates
them against your schemas, fans them out through internal topics and writes them to a
time-series store (InfluxDB line protocol) or its embedded SQLite store. Bad messages are
dead-lettered with a reason, never dropped.

Quick start:  gateway run --config config/gateway.yaml
Check config: gateway check-config --config config/gateway.yaml
"""

_GC_GEN0 = 200_000  # net allocations between young collections (CPython's default: 700); see _tune_gc

ENV_HELP = """\
Every config key can be overridden from the environment: GATEWAY_<SECTION>__<KEY>, e.g.
GATEWAY_INGRESS__PORT=1884, GATEWAY_SINKS__TSDB__TOKEN=..., GATEWAY_LOG__FORMAT=json.
The config file defaults to $GATEWAY_CONFIG, else config/gateway.yaml.
"""


def _config_arg(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("GATEWAY_CONFIG", str(DEFAULT_CONFIG_PATH))
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path(default),
        metavar="PATH",
        help=f"YAML config file (default: {default})",
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="gateway", description=DESCRIPTION, epilog=ENV_HELP, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the gateway until SIGTERM/SIGINT",
        description="Run the gateway: MQTT ingress, validation, internal topics and sinks, with the admin "
        "endpoint (/healthz, /readyz, /metrics). SIGTERM or Ctrl-C stops accepting messages, drains "
        "in-flight batches within shutdown.drain_timeout and exits 0.",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
    _config_arg(run)
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="client mode: N gateway processes sharing one $share subscription, each with its own client id "
        "(<client_id>-w<i>), data_dir/worker-<i> and admin port (admin.port + i); default 1",
    )

    check = sub.add_parser(
        "check-config",
        help="validate a config file and print a summary",
        description="Validate the config (file + environment overrides) without starting anything. Exit 0 with "
        "a summary of ingress, routes, schemas, subscriptions and sinks; exit 2 with every problem, naming "
        "the file, line, key and what was expected.",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
    _config_arg(check)

    query = sub.add_parser(
        "query",
        help="read readings back from the embedded SQLite store",
        description="Read stored readings from the embedded store (the sqlite sink). Times are RFC 3339 "
        "(2026-11-26T10:00:00Z), epoch seconds, or a duration back from now (30s, 15m, 2h, 7d).",
        formatter_class=fmt,
    )
    _config_arg(query)
    query.add_argument("--device", help="only this device id")
    query.add_argument("--field", help="only this field (e.g. temperature)")
    query.add_argument("--measurement", help="only this measurement")
    query.add_argument("--since", default="1h", help="start of the time range (default: 1h ago)")
    query.add_argument("--until", default=None, help="end of the time range (default: now)")
    query.add_argument("--limit", type=int, default=100, help="most rows, newest kept (default: 100)")
    query.add_argument("--format", choices=["table", "json"], default="table")
    query.add_argument("--sink", default=None, help="name of the sqlite sink when there are several")

    dl = sub.add_parser(
        "deadletter",
        help="inspect and replay dead letters",
        description="Inspect the dead-letter file, or replay dead letters once their cause is fixed.",
    )
    dl_sub = dl.add_subparsers(dest="dl_command", required=True, metavar="ACTION")
    dl_list = dl_sub.add_parser(
        "list",
        help="list dead letters with their reasons",
        description="List dead letters (oldest first): receive time, topic, stage, reason and payload.",
    )
    _config_arg(dl_list)
    dl_list.add_argument("--limit", type=int, default=50, help="show the newest N (default: 50)")
    dl_list.add_argument("--reason", default=None, help="only those whose reason contains this text")
    dl_list.add_argument("--format", choices=["table", "json"], default="table")
    replay_cli.register(sub, dl_sub, _config_arg)
    passwd_cli.register(sub)
    alerts_cli.register(sub, _config_arg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # e.g. `gateway query | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(replay_cli.join_negative_times(sys.argv[1:] if argv is None else argv))
    if args.command == "passwd":
        return passwd_cli.run(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from gateway import commands

    if args.command == "check-config":
        print(commands.summary(settings, args.config))
        return 0
    if args.command == "run" and args.workers != 1:
        return _run_workers(settings, args.config, args.workers)
    if args.command == "run":
        return _run(settings, args.config)
    if args.command == "query":
        return commands.query(settings, args)
    if args.command == "deadletter" and args.dl_command == "replay":
        return replay_cli.run_replay(settings, args)
    if args.command == "deadletter":
        return commands.deadletter_list(settings, args)
    if args.command == "seek":
        return replay_cli.run_seek(settings, args)
    if args.command == "alerts":
        return alerts_cli.run(settings, args)
    return 2


def _run(settings: GatewaySettings, config_path: Path | None = None) -> int:
    from gateway.app import Gateway, StartupError
    from gateway.logs import setup_logging

    setup_logging(settings.log.level, settings.log.format)
    try:
        gateway = Gateway(settings, config_path=config_path)
        _tune_gc()
        asyncio.run(gateway.run())
    except StartupError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def _tune_gc() -> None:
    """Keep the cyclic GC's pauses off the latency tail (measured in the bench's latency run).

    The ~80k objects of the imported modules and the built gateway are frozen (never scanned
    again), and young collections run every `_GC_GEN0` allocations instead of 700: with the
    defaults, messages held for a write batch were promoted and triggered full collections of
    the whole heap, 2-4 per 10 s at 3,000 msg/s, each stalling the event loop 60-190 ms on the
    2-core machine; tuned, about one in 10 s, of 12-45 ms. The count is of objects allocated
    minus those freed, so a young collection comes only when that many more objects are alive:
    at 20,000, the readings in flight in a flat-out batch run (about 13 objects each) set one
    off every few hundred milliseconds, each scanning objects still in flight, 8-10 % of the
    CPU; at 200,000 none happened in a 240,000-reading run. Only cyclic garbage waits longer
    (refcounting frees the rest at once)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_GEN0, 10, 10)


def _run_workers(settings: GatewaySettings, config_path: Path, workers: int) -> int:
    from gateway import workers as supervisor
    from gateway.logs import setup_logging

    problem = supervisor.refusal(settings, workers)
    if problem is not None:
        print(f"gateway: cannot start: {problem}", file=sys.stderr)
        return 2
    setup_logging(settings.log.level, settings.log.format)
    return supervisor.supervise(settings, config_path, workers)


if __name__ == "__main__":
    sys.exit(main())
