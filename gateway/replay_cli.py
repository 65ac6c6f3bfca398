"""`gateway seek` and `gateway deadletter replay`: replay commands, run against the live gateway.

Both call the running gateway's admin endpoint (`gateway.replay_routes`; address and token
from the config, `gateway.admin.client`): the gateway owns the bus database (exclusive lock)
and the decode path. `seek` also works with the gateway stopped: it then opens the bus
database itself and the new position is used at the next start. `deadletter replay` needs
the gateway running.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.admin.client import AdminError, AdminUnreachable, post
from gateway.core.seek import SeekResult, SeekUnsupported, parse_seek_time
from gateway.settings import INTERNAL_TOPICS, GatewaySettings

_TIME_OPTIONS = ("--to", "--since")
TIME_HELP = "now, a duration back from now (-2h, 15m, 7d), RFC 3339 (2026-11-26T10:00:00Z) or epoch seconds"


def _common(p: argparse.ArgumentParser, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    config_arg(p)
    p.add_argument("--admin-url", default=None, metavar="URL", help="admin endpoint (default: from the config's admin)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="seconds to wait (default: 600)")
    p.add_argument("--format", choices=["text", "json"], default="text")


def register(sub: Any, dl_sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    seek = sub.add_parser(
        "seek",
        help="re-deliver a subscription's retained messages from a time (or skip its backlog)",
        description=_wrap(
            "Move a subscription of the durable bus (bus.type: sqlite) to a time, like Pub/Sub's seek: the "
            "retained messages of its topic published at or after TIME become unacked and are delivered again "
            "(e.g. to re-drive a sink after a bug fix); earlier ones become acked. `--to now` skips the whole "
            "backlog. Acked messages are kept for bus.sqlite.retention (default 24h): older ones cannot come back.",
            "Talks to the running gateway's admin endpoint (address and admin.token from the config). When no "
            "gateway answers, it opens the bus database itself (the gateway must be stopped) and the next "
            "`gateway run` delivers from there.",
            "Re-delivered readings overwrite themselves in idempotent stores (sqlite, InfluxDB: same point "
            "identity); other sinks (webhooks, MQTT forwarders) receive them again.",
        ),
        epilog="examples:\n  gateway seek store --to -2h\n  gateway seek store --to 2026-11-26T10:00:00Z\n"
        "  gateway seek tsdb --to now",
        formatter_class=fmt,
    )
    seek.add_argument("subscription", metavar="SUBSCRIPTION", help="subscription name (bus.subscriptions)")
    seek.add_argument("--to", required=True, metavar="TIME", help=TIME_HELP)
    _common(seek, config_arg)

    replay = dl_sub.add_parser(
        "replay",
        help="re-inject dead letters through validation once their cause is fixed",
        description=_wrap(
            "Re-inject the dead letters of the dead-letter file (and its rotated files) through the running "
            "gateway's validation, as if the devices had published them again (same topic, payload, client id "
            "and receive time), e.g. after a schema or route fix and a restart. Messages refused again become "
            "new dead letters.",
            "Each dead letter is replayed once: what was replayed is remembered in <file>.replayed, so running "
            "it twice injects nothing new (--include-replayed overrides). Only refusals of the ingress path "
            "(sources validation, security, metadata) are replayed; dead letters of subscriptions and sinks are "
            "counted as not replayable.",
            "Needs the running gateway (admin endpoint and admin.token from the config).",
        ),
        epilog="examples:\n  gateway deadletter replay --dry-run\n  gateway deadletter replay --reason "
        "missing_field --since 2h",
        formatter_class=fmt,
    )
    replay.add_argument("--reason", default=None, metavar="CODE", help="only this reason code (e.g. missing_field)")
    replay.add_argument("--since", default=None, metavar="TIME", help=f"only those received since: {TIME_HELP}")
    replay.add_argument("--dry-run", action="store_true", help="count what would be replayed; inject nothing")
    replay.add_argument("--include-replayed", action="store_true", help="also inject dead letters replayed before")
    _common(replay, config_arg)


def join_negative_times(argv: Sequence[str]) -> list[str]:
    """`--to -2h` as `--to=-2h`: argparse would take `-2h` for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _TIME_OPTIONS and arg.startswith("-") and len(arg) > 1 and arg[1].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _wrap(*paragraphs: str) -> str:
    return "\n\n".join(textwrap.fill(p, 100) for p in paragraphs)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_seek(settings: GatewaySettings, args: argparse.Namespace) -> int:
    try:
        time_ns = parse_seek_time(args.to)
    except ValueError as exc:
        print(f"gateway seek: {exc}", file=sys.stderr)
        return 2
    if args.subscription not in settings.bus.subscriptions:
        print(f"gateway seek: no subscription {args.subscription!r}; have {sorted(settings.bus.subscriptions)}",
              file=sys.stderr)  # fmt: skip
        return 2
    if settings.bus.type != "sqlite":
        print("gateway seek: seek needs the durable sqlite bus (bus.type: sqlite)", file=sys.stderr)
        return 2
    offline = False
    try:
        data = post(settings, f"/subscriptions/{args.subscription}/seek", {"time_ns": time_ns}, args.admin_url,
                    args.timeout)  # fmt: skip
        result = SeekResult(**data)
    except AdminUnreachable as exc:
        print(f"gateway seek: {exc}; seeking offline in the bus database", file=sys.stderr)
        try:
            result = asyncio.run(_offline_seek(settings, args.subscription, time_ns))
        except (SeekUnsupported, ValueError, OSError) as err:
            print(f"gateway seek: {err}", file=sys.stderr)
            return 1
        offline = True
    except (AdminError, TypeError) as exc:
        print(f"gateway seek: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(orjson.dumps({**result.to_dict(), "offline": offline}, option=orjson.OPT_APPEND_NEWLINE)
                         .decode())  # fmt: skip
        return 0
    when = "at the next start" if offline else "now"
    print(f"{result.subscription}: seeked to {_iso(result.time_ns)}")
    print(f"  {result.redeliver} message(s) published since then will be delivered ({when})")
    print(f"  {result.skipped} unacked message(s) published before it acked (skipped)")
    if result.oldest_retained_ns is None or result.oldest_retained_ns > result.time_ns:
        since = "no message of the topic" if result.oldest_retained_ns is None else (
            f"messages from {_iso(result.oldest_retained_ns)} on")  # fmt: skip
        print(f"  note: retention keeps {since}; earlier ones cannot be delivered again")
    if result.undecodable:
        print(f"  warning: {result.undecodable} stored message(s) could not be read back (lost)")
    return 0


async def _offline_seek(settings: GatewaySettings, name: str, time_ns: int) -> SeekResult:
    from gateway.bus.sqlite import BusOpenError, SQLiteBus

    bus = SQLiteBus(settings.bus.sqlite, settings.data_dir)
    if not bus.path.exists():
        raise ValueError(f"no bus database at {bus.path}: the gateway has not run with this config")
    try:
        await bus.open()
    except BusOpenError as exc:
        raise ValueError(f"cannot open the bus database {bus.path}: {exc}") from None
    try:
        for topic in INTERNAL_TOPICS:
            bus.create_topic(topic)
        for sub in settings.bus.subscriptions.values():
            bus.create_subscription(sub)
        return await bus.seek(name, time_ns)
    finally:
        await bus.close()


def run_replay(settings: GatewaySettings, args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"dry_run": args.dry_run, "include_replayed": args.include_replayed}
    if args.reason:
        payload["code"] = args.reason
    if args.since:
        try:
            payload["since_ns"] = parse_seek_time(args.since)
        except ValueError as exc:
            print(f"gateway deadletter replay: {exc}", file=sys.stderr)
            return 2
    try:
        s = post(settings, "/deadletters/replay", payload, args.admin_url, args.timeout)
    except AdminUnreachable as exc:
        print(f"gateway deadletter replay: {exc}; replay needs the running gateway (its validation)",
              file=sys.stderr)  # fmt: skip
        return 1
    except AdminError as exc:
        print(f"gateway deadletter replay: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(orjson.dumps(s, option=orjson.OPT_APPEND_NEWLINE).decode())
        return 0
    verb = "would replay" if s["dry_run"] else "replayed"
    print(f"{verb} {s['replayed']} of {s['matched']} matching dead letter(s) from {s['file']}")
    print(f"  valid now          {s['valid']} ({s['readings']} reading(s))")
    print(f"  refused again      {sum(s['refused_again'].values())}{_by(s['refused_again'])}")
    if s["metadata"]:
        print(f"  metadata messages  {s['metadata']} (handed to the change detector)")
    print(f"  already replayed   {s['already_replayed']} (skipped; --include-replayed injects them again)")
    if s["not_replayable"]:
        print(f"  not replayable     {sum(s['not_replayable'].values())}{_by(s['not_replayable'])} "
              "(refused after validation: not re-decoded)")  # fmt: skip
    if s["unreadable"]:
        print(f"  unreadable         {s['unreadable']} (no topic or payload in the record)")
    return 0


def _by(counts: dict[str, int]) -> str:
    return (": " + ", ".join(f"{k or '?'} {v}" for k, v in sorted(counts.items()))) if counts else ""
