"""`gateway check-config`: every shipped config passes; broken ones fail with a precise message."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
ingress:
  type: embedded
  port: 1883
routes:
  - pattern: devices/{device_id}/telemetry
    schema: env
schemas:
  env:
    measurement: environment
    fields:
      temperature: {type: float, min: -40, max: 125}
"""


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    code = main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["gateway.yaml", "gateway.external.yaml"])
def test_shipped_configs_pass(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", "--config", str(ROOT / "config" / name)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "OK" in out and "routes" in out and "sinks" in out


def test_minimal_config_gets_default_store_and_deadletters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(tmp_path, MINIMAL, capsys)
    assert code == 0, err
    assert "sqlite" in out and "deadletter_file" in out
    assert "127.0.0.1:1883" in out


def test_env_overrides_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_INGRESS__PORT", "1999")
    code, out, _ = check(tmp_path, MINIMAL, capsys)
    assert code == 0
    assert "127.0.0.1:1999" in out


BROKEN = [
    # (what is wrong, config text, fragments the message must contain)
    ("unknown top-level key", MINIMAL + "ingres: {}\n", ["line 12", "ingres", "unknown key"]),
    (
        "port not a number",
        MINIMAL.replace("port: 1883", "port: abc"),
        ["line 3", "ingress.port", "valid integer", "'abc'"],
    ),
    (
        "unknown ingress type",
        MINIMAL.replace("type: embedded", "type: kafka"),
        ["ingress", "unknown type 'kafka'", "embedded"],
    ),
    (
        "unknown key inside a schema field",
        MINIMAL.replace("min: -40,", "minimum: -40,"),
        ["line 11", "schemas.env.fields.temperature.minimum", "unknown key"],
    ),
    (
        "route names a missing schema",
        MINIMAL.replace("schema: env", "schema: climate"),
        ["line 6", "routes.0.schema", "climate"],
    ),
    (
        "sink reads a missing subscription",
        MINIMAL + "bus:\n  subscriptions:\n    dl: {topic: deadletter, dead_letter_topic: null}\n"
        "sinks:\n  d: {type: deadletter_file, subscription: dl}\n  s: {type: sqlite, subscription: nope}\n",
        ["sinks.s.subscription", "no subscription named 'nope'"],
    ),
    (
        "subscription on an unknown topic",
        MINIMAL
        + "bus:\n  subscriptions:\n    x: {topic: metrics}\n    dl: {topic: deadletter, dead_letter_topic: null}\n"
        "sinks:\n  d: {type: deadletter_file, subscription: dl}\n  s: {type: sqlite, subscription: x}\n",
        ["bus.subscriptions.x.topic", "unknown topic 'metrics'"],
    ),
    (
        "bad duration",
        MINIMAL + "shutdown:\n  drain_timeout: soon\n",
        ["line 13", "shutdown.drain_timeout", "not a duration"],
    ),
    ("not YAML", MINIMAL + "routes: [\n", ["not valid YAML", "line"]),
    ("not a mapping", "- just\n- a list\n", ["must be a mapping"]),
    ("sink without type", MINIMAL + "sinks:\n  s: {subscription: x}\n", ["sinks.s", "'type'"]),
    (
        "min above max",
        MINIMAL.replace("min: -40, max: 125", "min: 10, max: 5"),
        ["schemas.env.fields.temperature", "min"],
    ),
]


@pytest.mark.parametrize(("what", "text", "fragments"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_configs_are_explained(
    what: str, text: str, fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(tmp_path, text, capsys)
    assert code == 2, f"{what}: accepted\n{out}"
    assert str(tmp_path / "gw.yaml") in err
    for fragment in fragments:
        assert fragment in err, f"{what}: {fragment!r} not in:\n{err}"


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", "--config", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert "file not found" in capsys.readouterr().err


def test_bad_env_override_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_INGRESS__PORT", "99999")
    code, _, err = check(tmp_path, MINIMAL, capsys)
    assert code == 2
    assert "environment variable GATEWAY_INGRESS__PORT" in err and "ingress.port" in err


def test_secrets_are_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = MINIMAL.replace(
        "type: embedded\n  port: 1883", "type: client\n  host: 127.0.0.1\n  password: [hunter2-secret]"
    )
    code, out, err = check(tmp_path, text, capsys)
    assert code == 2 and "ingress.password" in err
    assert "hunter2-secret" not in err + out
    monkeypatch.setenv("GATEWAY_INGRESS__PASSWORD", "s3cr3t-from-env")
    code, out, err = check(
        tmp_path, MINIMAL.replace("type: embedded\n  port: 1883", "type: client\n  host: 127.0.0.1"), capsys
    )
    assert code == 0, err
    assert "s3cr3t-from-env" not in out + err


FORWARDERS = (
    MINIMAL
    + """\
bus:
  subscriptions:
    store: {topic: telemetry}
    dl: {topic: deadletter, dead_letter_topic: null}
    alert-engine: {topic: telemetry}
    cache-detector: {topic: telemetry}
    to-webhook: {topic: alerts}
    to-mqtt: {topic: alerts}
    to-log: {topic: alerts}
    to-redis: {topic: invalidations}
sinks:
  store: {type: sqlite, subscription: store}
  dl: {type: deadletter_file, subscription: dl}
  hook:
    type: webhook
    subscription: to-webhook
    url: "https://ops:url-pass-1@hooks.example.com/alerts?token=query-secret-2"
    secret: hmac-secret-3
    runner: {max_retries: 7}
  mqtt: {type: mqtt_publish, subscription: to-mqtt, port: 1884, username: gw, password: mqtt-secret-4, retain: true}
  log: {type: log, subscription: to-log, level: warning}
  cache:
    type: redis
    subscription: to-redis
    url: "redis://:url-pass-5@cache.example.com:6380/2"
    password: redis-secret-6
    delete_keys: ["device:{device_id}"]
alerts:
  subscription: alert-engine
  rules:
    too-hot: {type: threshold, field: temperature, op: ">", value: 30, clear: 28, for: 1m, severity: critical,
              select: {device_id: ["sensor-*"], tags: {site: [lab]}}}
    heating: {type: rate, field: temperature, op: ">", value: 0.05, window: 5m}
    offline: {type: absence, after: 5m}
invalidation:
  subscription: cache-detector
  meta_topics: ["devices/{device_id}/meta"]
  state_fields: [firmware]
  after_sink: store
"""
)


def test_summary_lists_alert_rules_and_forwarders_without_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(tmp_path, FORWARDERS, capsys)
    assert code == 0, err
    for line in [
        "hook           webhook          <- to-webhook  POST https://hooks.example.com/alerts, "
        "signed (HMAC-SHA256 in X-Gateway-Signature), timeout 5s; 7 retries, then dead-lettered",
        "mqtt           mqtt_publish     <- to-mqtt  mqtt://127.0.0.1:1884 topic alerts/{rule}/{device_id} | "
        "cache/invalidate/{object_type}/{id}, QoS 1, retained, user 'gw'; 5 retries, then dead-lettered",
        "log            log              <- to-log  logger gateway.events at warning",
        "cache          redis            <- to-redis  redis://cache.example.com:6380/2: "
        "PUBLISH cache-invalidations, DEL device:{device_id}, with password",
        "alerts     <- alert-engine, 3 rules; state ",
        "alerts.json (last-seen saved every 10s), absence checked every 1s",
        "  too-hot        threshold: temperature > 30 (clear 28) for 1m, critical, select device_id sensor-*; site lab",
        "  heating        rate: temperature/s over 5m > 0.05, warning",
        "  offline        absence: silent for 5m, warning",
        "invalidation device changes coalesced over 500ms, telemetry changes wait for sink 'store'",
        "  sources  meta topics devices/{device_id}/meta; state fields firmware <- cache-detector",
    ]:
        assert line in out, f"{line!r} not in:\n{out}"
    for secret in ("url-pass-1", "query-secret-2", "hmac-secret-3", "mqtt-secret-4", "url-pass-5", "redis-secret-6"):
        assert secret not in out + err
