"""Who sent a message: the identity the embedded broker authenticated.

`AuthenticatedMessage` is a `RawMessage` that also carries the `Identity` of the publishing
connection; code that does not know it sees a plain `RawMessage`. Only the embedded broker
creates it (an external broker does not tell subscribers who published).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.core.message import RawMessage
from gateway.security.passwords import Role

Method = Literal["password", "certificate", "anonymous"]


@dataclass(frozen=True, slots=True)
class Identity:
    """`name` is the username or the client certificate's CN ("" for anonymous clients)."""

    name: str
    role: Role
    method: Method

    @property
    def restricted(self) -> bool:
        """True when the ACL applies: authenticated clients. Anonymous ones (allowed only
        where the operator allowed them, by default on loopback) are not restricted."""
        return self.method != "anonymous"


ANONYMOUS = Identity("", "device", "anonymous")


@dataclass(slots=True)
class AuthenticatedMessage(RawMessage):
    identity: Identity | None = None
