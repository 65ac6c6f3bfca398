"""Security building blocks without I/O beyond tmp files: ACL, token buckets, password file,
guard, config rules, the passwd command."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from pydantic import ValidationError

from gateway.config_errors import ConfigError
from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.ingress.config import EmbeddedIngressConfig
from gateway.ingress.topics import RouteConfig, TopicRouter
from gateway.security import passwd_cli
from gateway.security.acl import Acl, filter_within, topic_matches
from gateway.security.config import AclConfig, RateLimitConfig, SecurityConfig, is_loopback
from gateway.security.guard import Guard
from gateway.security.identity import ANONYMOUS, AuthenticatedMessage, Identity
from gateway.security.passwords import PasswordFile, PasswordFileError
from gateway.security.ratelimit import TokenBuckets
from gateway.settings import AdminConfig, load_settings

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
DEV = Identity("dev-a", "device", "password")
OPS = Identity("ops", "operator", "password")


@pytest.mark.parametrize(
    ("topic", "topic_filter", "expected"),
    [
        ("devices/a/telemetry", "devices/a/#", True),
        ("devices/a", "devices/a/#", True),
        ("devices/b/telemetry", "devices/a/#", False),
        ("devices/a/x/y", "devices/+/x/+", True),
        ("devices/a/x", "devices/+", False),
        ("$SYS/x", "#", False),
        ("$SYS/x", "+/x", False),
    ],
)
def test_topic_matching(topic: str, topic_filter: str, expected: bool) -> None:
    assert topic_matches(topic, topic_filter) is expected


@pytest.mark.parametrize(
    ("requested", "allowed", "expected"),
    [
        ("devices/a/+", "devices/a/#", True),
        ("devices/a/#", "devices/a/#", True),
        ("devices/#", "devices/a/#", False),
        ("devices/+/x", "devices/a/#", False),
        ("devices/a/x", "devices/+/x", True),
        ("devices/a/#", "devices/+/x", False),
        ("#", "devices/a/#", False),
        ("$SYS/#", "#", False),
    ],
)
def test_filter_within(requested: str, allowed: str, expected: bool) -> None:
    assert filter_within(requested, allowed) is expected


def test_acl_by_role_and_username() -> None:
    acl = Acl(AclConfig())
    assert acl.may_publish(DEV, "devices/dev-a/telemetry")
    assert not acl.may_publish(DEV, "devices/dev-b/telemetry")
    assert not acl.may_subscribe(DEV, "devices/+/telemetry")
    assert acl.may_subscribe(DEV, "devices/dev-a/cmd")
    assert acl.may_publish(OPS, "devices/dev-b/cmd") and acl.may_subscribe(OPS, "#")
    assert acl.may_publish(ANONYMOUS, "anything/at/all")


def test_acl_config_refuses_bad_filters() -> None:
    for bad in (["devices/#/x"], ["devices/a+"], ["devices/{user}/#"], ["devices/x{username}/#"], [""]):
        with pytest.raises(ValidationError):
            AclConfig(publish=bad)


def test_token_buckets_refill_and_stay_bounded() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=2)
    assert [buckets.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.allow("a", 0.5) and not buckets.allow("a", 0.5)
    buckets.allow("b", 1.0)
    buckets.allow("c", 1.0)
    assert len(buckets) == 2


def test_password_file_round_trip_and_errors(tmp_path: Path) -> None:
    users = PasswordFile(tmp_path / "pw", FAST)
    users.set("dev-a", "pw-one", "device")
    users.set("ops", "pw-two", "operator")
    users.save()
    assert (tmp_path / "pw").stat().st_mode & 0o777 == 0o600
    text = (tmp_path / "pw").read_text()
    assert "pw-one" not in text and "$argon2id$" in text
    loaded = PasswordFile(tmp_path / "pw", FAST).load()
    user = loaded.verify("dev-a", "pw-one")
    assert user is not None and user.role == "device"
    assert loaded.verify("dev-a", "pw-two") is None and loaded.verify("nobody", "pw-one") is None
    for bad in ("bad/name", "a+b", "a:b", "", "x" * 129):
        with pytest.raises(ValueError):
            users.set(bad, "pw", "device")
    (tmp_path / "broken").write_text("dev-a:device:plaintext-password\nops:admin:$argon2id$x\n")
    with pytest.raises(PasswordFileError) as info:
        PasswordFile(tmp_path / "broken").load()
    assert "line 1" in str(info.value) and "line 2" in str(info.value) and "plaintext-password" not in str(info.value)


def make_guard(**config: object) -> Guard:
    router = TopicRouter([RouteConfig.model_validate({"pattern": "devices/{device_id}/telemetry", "schema": "s"})])
    return Guard(SecurityConfig.model_validate(config), router, Metrics(), clock=lambda: 0.0)


def test_guard_depth_identity_and_rate_limit() -> None:
    guard = make_guard(max_topic_levels=4, rate_limit={"messages_per_second": 1, "burst": 2})
    deep = guard.check(RawMessage("a/" * 4 + "b", b"x"))
    assert deep is not None and deep.code == "too_deep" and deep.payload == b"x"
    forged = guard.check(AuthenticatedMessage("devices/dev-b/telemetry", b"{}", identity=DEV))
    assert forged is not None and forged.code == "identity_mismatch"
    assert guard.check(AuthenticatedMessage("devices/dev-b/telemetry", b"{}", identity=OPS)) is None
    assert guard.check(AuthenticatedMessage("devices/dev-a/telemetry", b"{}", identity=DEV)) is None
    assert guard.check(RawMessage("devices/dev-a/telemetry", b"{}", client_id="c")) is None  # 2nd of burst 2
    limited = guard.check(RawMessage("devices/dev-a/telemetry", b"{}", client_id="c"))
    assert limited is not None and limited.code == "rate_limited"
    assert guard._metrics.registry.get_sample_value("gateway_rate_limited_total") == 1
    assert guard.check(RawMessage("devices/dev-b/telemetry", b"{}")) is None  # another device's bucket


def test_guard_passes_all_only_when_check_would_pass_each_and_count_nothing() -> None:
    plain = [RawMessage(f"devices/dev-{i}/telemetry", b"{}") for i in range(3)]
    guard = make_guard(max_topic_levels=3)
    assert guard.passes_all(plain) and all(guard.check(raw) is None for raw in plain)
    assert not guard.passes_all([*plain, RawMessage("a/b/c/d", b"{}")])  # too deep: check words it
    assert not guard.passes_all([*plain, AuthenticatedMessage("devices/dev-a/telemetry", b"{}", identity=DEV)])
    assert not guard.passes_all([])
    limited = make_guard(rate_limit={"messages_per_second": 1, "burst": 2})
    assert not limited.passes_all(plain)  # every message must take a token, one by one


def test_exposure_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("gateway.example")
    assert EmbeddedIngressConfig().allow_anonymous
    with pytest.raises(ValidationError, match="no device could connect"):
        EmbeddedIngressConfig(host="0.0.0.0")
    assert not EmbeddedIngressConfig.model_validate(
        {"host": "0.0.0.0", "auth": {"password_file": "pw"}}
    ).allow_anonymous
    with pytest.raises(ValidationError, match=r"admin\.token"):
        AdminConfig(host="0.0.0.0")
    AdminConfig(host="0.0.0.0", token="a-long-enough-token")


def test_config_errors_never_echo_a_token(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("admin: {host: 0.0.0.0, token: short-secret}\nroutes: []\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "admin.token: must be at least 16 characters" in str(info.value)
    assert "short-secret" not in str(info.value)
    with pytest.raises(ValidationError):
        RateLimitConfig(messages_per_second=0, burst=1)


def test_passwd_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    passwd_cli.register(parser.add_subparsers(dest="command"))
    path = str(tmp_path / "pw")
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    assert (
        passwd_cli.run(
            parser.parse_args(["passwd", "add", "-f", path, "ops", "--role", "operator", "--password-stdin"])
        )
        == 0
    )
    assert passwd_cli.run(parser.parse_args(["passwd", "list", "-f", path])) == 0
    assert "ops\toperator" in capsys.readouterr().out
    assert PasswordFile(Path(path)).load().verify("ops", "s3cret-pass") is not None
    assert passwd_cli.run(parser.parse_args(["passwd", "remove", "-f", path, "nobody"])) == 1
    assert passwd_cli.run(parser.parse_args(["passwd", "remove", "-f", path, "ops"])) == 0
    assert PasswordFile(Path(path)).load().users == {}
