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
