"""`gateway run --workers N`: what is refused before anything starts, and each worker's overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.settings import load_settings
from gateway.workers import refusal, worker_env
from tests.gateway_proc import write_config

SUBS = {"store": {"topic": "telemetry"}, "deadletters": {"topic": "deadletter", "dead_letter_topic": None}}
CLIENT = {"type": "client", "host": "127.0.0.1", "port": 1883, "client_id": "gw/1"}


def settings(tmp_path: Path, ingress: dict[str, Any] = CLIENT, store_path: str | None = None) -> Any:
    store: dict[str, Any] = {"type": "sqlite", "subscription": "store"}
    if store_path is not None:
        store["path"] = store_path
    sinks = {"store": store, "deadletters": {"type": "deadletter_file", "subscription": "deadletters"}}
    return load_settings(write_config(tmp_path, ingress=ingress, sinks=sinks, subscriptions=SUBS))


def test_one_or_more_workers_in_client_mode_are_accepted(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert refusal(s, 1) is None
    assert refusal(s, 4) is None


@pytest.mark.parametrize(
    ("ingress", "store_path", "workers", "words"),
    [
        ({"type": "embedded", "host": "127.0.0.1", "port": 1883}, None, 2, "needs the client ingress"),
        (CLIENT, "/var/lib/gw/readings.db", 2, "sinks.store.path is an absolute path"),
        (CLIENT, None, 0, "at least 1"),
    ],
)
def test_refused(tmp_path: Path, ingress: dict[str, Any], store_path: str | None, workers: int, words: str) -> None:
    problem = refusal(settings(tmp_path, ingress, store_path), workers)
    assert problem is not None and words in problem


def test_each_worker_has_its_own_client_id_data_dir_and_admin_port(tmp_path: Path) -> None:
    s = settings(tmp_path)
    env = worker_env(s, 1)
    assert env["GATEWAY_INGRESS__CLIENT_ID"] == "gw/1-w1"
    assert env["GATEWAY_INGRESS__SHARED_GROUP"] == "gw_1"  # '/' is not allowed in a share name
    assert env["GATEWAY_DATA_DIR"] == str(s.data_dir / "worker-1")
    assert env["GATEWAY_ADMIN__PORT"] == str(s.admin.port + 1)
