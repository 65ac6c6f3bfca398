"""Dead-letter replay's bookkeeping (gateway.replay) and the admin routes and client around it."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from gateway.admin.client import AdminError, AdminUnreachable, post
from gateway.admin.server import AdminServer, Readiness
from gateway.core.message import DeadLetter, RawMessage
from gateway.core.metrics import Metrics
from gateway.replay import Replayer, ReplayRequest, raw_message
from gateway.settings import GatewaySettings
from gateway.validation.decode import DecodeResult
from tests.servers import free_port


def letter(topic: str, payload: bytes, code: str, source: str = "validation", received_ns: int = 1) -> bytes:
    dl = DeadLetter(topic, payload, f"because {code}", source, received_ns, client_id="c1", code=code)
    return orjson.dumps(dl.to_record(), option=orjson.OPT_APPEND_NEWLINE)


class Recorder:
    def __init__(self) -> None:
        self.handled: list[RawMessage] = []

    async def handle(self, raw: RawMessage) -> None:
        self.handled.append(raw)

    def preview(self, raw: RawMessage) -> DecodeResult | None:
        return DecodeResult([], [])  # every message decodes (no readings needed here)


async def test_replay_filters_remembers_and_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "deadletter.jsonl"
    path.with_name("deadletter.jsonl.1").write_bytes(letter("devices/a/telemetry", b"\xff\x00", "malformed_json"))
    path.write_bytes(
        letter("devices/b/telemetry", b"{}", "missing_field", received_ns=5)
        + b"{torn line\n"
        + letter("devices/b/telemetry", b"{}", "missing_field", received_ns=5)  # a duplicate (sink rewrite)
        + letter("reading/env/c", b"{}", "", source="subscription:store")
    )
    rec = Recorder()
    replayer = Replayer(path, rec.handle, rec.preview)

    dry = await replayer.replay(ReplayRequest(dry_run=True))
    assert (dry.matched, dry.replayed, dry.already_replayed, dry.not_replayable) == (4, 2, 1, {"subscription:store": 1})
    assert rec.handled == [] and not path.with_name("deadletter.jsonl.replayed").exists()

    only = await replayer.replay(ReplayRequest(code="malformed_json"))
    assert (only.matched, only.replayed) == (1, 1)
    raw = rec.handled[0]
    assert (raw.topic, raw.payload, raw.client_id, raw.received_ns) == ("devices/a/telemetry", b"\xff\x00", "c1", 1)

    since = await replayer.replay(ReplayRequest(since_ns=5))
    assert (since.matched, since.replayed, since.already_replayed) == (2, 1, 1)
    assert await replayer.replay(ReplayRequest()) == await replayer.replay(ReplayRequest()) and len(rec.handled) == 2

    # rotation renames files: what was replayed stays replayed
    path.rename(path.with_name("deadletter.jsonl.2"))
    assert (await replayer.replay(ReplayRequest())).replayed == 0
    assert (await replayer.replay(ReplayRequest(include_replayed=True))).replayed == 2


def test_raw_message_refuses_unusable_records() -> None:
    with pytest.raises(ValueError, match="topic"):
        raw_message({"payload": "x"})
    with pytest.raises(ValueError, match="base64"):
        raw_message({"topic": "t", "payload": "!!", "payload_encoding": "base64"})
    raw = raw_message({"topic": "t", "payload": base64.b64encode(b"\x00").decode(), "payload_encoding": "base64"})
    assert raw.payload == b"\x00" and raw.qos == 1


async def test_admin_post_routes_need_the_token_and_the_client_sends_it(tmp_path: Path) -> None:
    token = SecretStr("s" * 20)
    port = free_port()
    server = AdminServer("127.0.0.1", port, Metrics(), lambda: Readiness(True, {}), lambda: None, token=token)
    seen: list[tuple[str, str, bytes]] = []

    async def hook(method: str, target: str, body: bytes) -> tuple[int, bytes, str] | None:
        seen.append((method, target, body))
        return (200, b'{"ok": true}', "application/json") if target == "/x" else None

    server.add_route_hook(hook)
    await server.start()
    try:
        base: dict[str, Any] = {"data_dir": str(tmp_path), "admin": {"port": port, "token": token.get_secret_value()}}
        settings = GatewaySettings.model_validate(base)
        assert await asyncio.to_thread(post, settings, "/x", {"a": 1}, None, 5) == {"ok": True}
        assert seen == [("POST", "/x", b'{"a": 1}')]
        with pytest.raises(AdminError, match="POST is not supported"):
            await asyncio.to_thread(post, settings, "/y", {}, None, 5)
        settings.admin.token = SecretStr("t" * 20)
        with pytest.raises(AdminError, match="refused the admin token"):
            await asyncio.to_thread(post, settings, "/x", {}, None, 5)
    finally:
        await server.stop()
    with pytest.raises(AdminUnreachable, match="no gateway answers"):
        await asyncio.to_thread(post, settings, "/x", {}, None, 5)
