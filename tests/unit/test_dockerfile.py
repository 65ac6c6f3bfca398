"""No Docker engine runs here: check that what the Dockerfile copies and runs exists."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import orjson

from gateway.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    out = []
    for raw in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_copied_source_exists() -> None:
    copies = [rest for word, rest in instructions() if word == "COPY"]
    assert copies
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_entrypoint_is_a_console_script_and_cmd_parses() -> None:
    inst = dict(instructions())
    entry = orjson.loads(inst["ENTRYPOINT"])
    cmd = orjson.loads(inst["CMD"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["gateway"] and "gateway" in scripts
    args = build_parser().parse_args(cmd)
    assert args.command == "run"
    copied_config = [rest for word, rest in instructions() if word == "COPY" and str(args.config) in rest]
    assert copied_config, "the config that CMD names is copied into the image"


def test_non_root_and_ports_exposed() -> None:
    inst = instructions()
    users = [rest for word, rest in inst if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    exposed = " ".join(rest for word, rest in inst if word == "EXPOSE").split()
    assert "1883" in exposed and "9464" in exposed
