"""`gateway alerts`: the alerts firing now, read from the alert state file (see `alert_state`).

The file is rewritten atomically by the running gateway on every change, so the command
works offline and while the gateway runs, without the admin endpoint. After an unclean stop
it shows what was firing at the last change. (`GET /alerts` on the admin endpoint answers the
same from the running process.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from gateway.processors.alert_state import read_state
from gateway.processors.build import state_path


def register(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "alerts",
        help="list the alerts firing now",
        description="List the alerts firing now (from the alert state file in data_dir, kept by the gateway).",
    )
    config_arg(p)
    p.add_argument("--format", choices=["table", "json"], default="table")


def run(settings: Any, args: argparse.Namespace) -> int:
    path = state_path(settings)
    if path is None:
        print("gateway alerts: this config has no alerts section", file=sys.stderr)
        return 2
    try:
        firing = read_state(path)
    except ValueError as exc:
        print(f"gateway alerts: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(orjson.dumps([e.to_dict() for e in firing], option=orjson.OPT_APPEND_NEWLINE).decode())
        return 0
    rows = [
        {
            "since": datetime.fromtimestamp(e.started_ns / 1e9).astimezone().isoformat(timespec="seconds"),
            "severity": e.severity,
            "rule": e.rule,
            "device_id": e.device_id,
            "alert_id": e.alert_id,
            "summary": e.summary,
        }
        for e in firing
    ]
    columns = ["since", "severity", "rule", "device_id", "alert_id", "summary"]
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
    print(f"({len(rows)} firing, from {path})")
    return 0
