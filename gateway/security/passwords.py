"""The password file: `username:role:hash` lines, hashes made with Argon2id (argon2-cffi).

Format: one user per line, `#` comments and blank lines ignored; `role` is `device` or
`operator`; the hash is argon2-cffi's PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
which carries its own random salt and cost parameters. Plain passwords are never stored.

Guarantees:
* `PasswordFile.load` reports every malformed line by number, never by content (a line
  could hold a password typed in by mistake).
* `save` writes a temporary file with mode 0600 and renames it over the old one: a reader
  sees the old or the new file, never half of one.
* `verify` takes about the same time whether or not the user exists (an unknown user is
  checked against a dummy hash), and compares with argon2's constant-time verification.
Not promised: protection against a local attacker who can read the file (the hashes are
slow to attack, not impossible); keep it readable by the gateway only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

Role = Literal["device", "operator"]
ROLES: tuple[Role, ...] = ("device", "operator")
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


class PasswordFileError(Exception):
    """The password file cannot be used; the message names the file and line, never a secret."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    hash: str


def username_problem(name: str) -> str | None:
    """Why `name` cannot be a username (it becomes a topic level in ACLs), or None."""
    if not _USERNAME.match(name):
        return "a username is 1-128 characters of A-Z a-z 0-9 . _ @ - (no '/', '+', '#', ':' or spaces)"
    return None


class PasswordFile:
    """The users of one password file. The constructor does no I/O; `load`/`save` do."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self.users: dict[str, User] = {}
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    def load(self) -> PasswordFile:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PasswordFileError(f"password file {str(self.path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PasswordFileError(f"cannot read password file {str(self.path)!r}: {type(exc).__name__}") from None
        users: dict[str, User] = {}
        problems: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":", 2)
            if len(parts) != 3 or parts[1] not in ROLES or not parts[2].startswith("$argon2"):
                problems.append(f"line {number}: expected username:device|operator:$argon2id$...")
                continue
            name, role, hashed = parts
            if username_problem(name):
                problems.append(f"line {number}: invalid username")
            elif name in users:
                problems.append(f"line {number}: user {name!r} appears twice")
            else:
                users[name] = User(name, role, hashed)  # type: ignore[arg-type]  # checked against ROLES
        if problems:
            raise PasswordFileError(f"password file {str(self.path)!r}: " + "; ".join(problems))
        self.users = users
        return self

    def save(self) -> None:
        lines = ["# gateway password file: username:role:argon2id hash (manage with `gateway passwd`)"]
        lines += [f"{u.name}:{u.role}:{u.hash}" for u in sorted(self.users.values(), key=lambda u: u.name)]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def set(self, name: str, password: str, role: Role) -> None:
        problem = username_problem(name)
        if problem:
            raise ValueError(problem)
        if not password:
            raise ValueError("the password is empty")
        self.users[name] = User(name, role, self._hasher.hash(password))

    def remove(self, name: str) -> bool:
        return self.users.pop(name, None) is not None

    def verify(self, name: str, password: str) -> User | None:
        """The user when `password` is theirs, else None. Slow on purpose (Argon2): call it off the event loop."""
        user = self.users.get(name)
        if user is None:
            if self._dummy is None:
                self._dummy = self._hasher.hash("gateway-dummy-password")
            hashed = self._dummy
        else:
            hashed = user.hash
        try:
            self._hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user
