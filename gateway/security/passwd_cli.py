"""`gateway passwd add|remove|list`: manage the embedded broker's password file.

The file is `ingress.auth.password_file` of the config, or `--file`. `add` reads the
password from `--password-stdin` (one line) or asks twice on the terminal; it is never taken
from the command line (it would be visible in `ps` and shell history). `list` prints names
and roles, never hashes. Exit codes: 0 done; 1 user not found; 2 unusable file or arguments.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from gateway.security.passwords import ROLES, PasswordFile, PasswordFileError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "passwd",
        help="manage the embedded broker's users (password file)",
        description="Add, remove or list the users of the embedded broker's password file "
        "(ingress.auth.password_file). Passwords are stored as salted Argon2id hashes.",
    )
    actions = p.add_subparsers(dest="passwd_command", required=True, metavar="ACTION")
    for name, help_text in (
        ("add", "add a user or change its password/role"),
        ("remove", "remove a user"),
        ("list", "list users and roles"),
    ):
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("--file", "-f", type=Path, default=None, help="password file (default: from the config)")
        default = os.environ.get("GATEWAY_CONFIG", "config/gateway.yaml")
        a.add_argument("--config", "-c", type=Path, default=Path(default), metavar="PATH", help="YAML config file")
        if name != "list":
            a.add_argument("username")
        if name == "add":
            a.add_argument("--role", choices=ROLES, default="device", help="device (default) or operator")
            a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def _password_file(args: argparse.Namespace) -> Path | None:
    if args.file is not None:
        return Path(args.file)
    from gateway.config_errors import ConfigError
    from gateway.ingress.config import EmbeddedIngressConfig
    from gateway.settings import load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    ing = settings.ingress
    if isinstance(ing, EmbeddedIngressConfig) and ing.auth.password_file:
        return Path(ing.auth.password_file)
    print("gateway passwd: no ingress.auth.password_file in the config; pass --file", file=sys.stderr)
    return None


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        print("gateway passwd: the passwords differ", file=sys.stderr)
        return None
    return first


def run(args: argparse.Namespace) -> int:
    path = _password_file(args)
    if path is None:
        return 2
    users = PasswordFile(path)
    try:
        if path.exists() or args.passwd_command != "add":
            users.load()
    except PasswordFileError as exc:
        print(f"gateway passwd: {exc}", file=sys.stderr)
        return 2
    if args.passwd_command == "list":
        for user in sorted(users.users.values(), key=lambda u: u.name):
            print(f"{user.name}\t{user.role}")
        return 0
    if args.passwd_command == "remove":
        if not users.remove(args.username):
            print(f"gateway passwd: no user {args.username!r} in {str(path)!r}", file=sys.stderr)
            return 1
        users.save()
        print(f"removed {args.username}")
        return 0
    password = _read_password(args.password_stdin)
    if password is None:
        return 2
    try:
        users.set(args.username, password, args.role)
    except ValueError as exc:
        print(f"gateway passwd: {exc}", file=sys.stderr)
        return 2
    users.save()
    print(f"saved {args.username} ({args.role}) in {path}")
    return 0
