"""Authentication and authorisation decisions for the embedded broker.

`BrokerSecurity` decides; `gateway.ingress.embedded` asks it from inside amqtt (at CONNECT,
SUBSCRIBE, PUBLISH and forwarding). Decisions:

* A client with a verified client certificate is the device named by its CN (which must be a
  valid username; a username sent alongside must equal it).
* Otherwise a client sending a username is checked against the password file (Argon2,
  off the event loop, at most `_MAX_PARALLEL_VERIFY` at a time so that a flood of CONNECTs
  cannot take every core); with no password file credentials are ignored and the client is
  anonymous.
* A client without credentials is anonymous: accepted only with `allow_anonymous`, which
  defaults to true on a loopback listener and false otherwise.
* Refusals are counted in `gateway_auth_failures_total{reason}` and logged with the client
  id, remote address and reason; passwords are never logged or kept beyond the check.
* ACL refusals are counted in `gateway_acl_denied_total{action}` and logged with the client
  id and topic.
`load()` reads the password file (I/O): call it at start. The constructor does no I/O.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.core.metrics import Metrics
from gateway.security.acl import Acl
from gateway.security.config import AclConfig, AuthConfig, is_loopback
from gateway.security.identity import ANONYMOUS, Identity
from gateway.security.passwords import PasswordFile, username_problem

log = logging.getLogger("gateway.security")
_MAX_PARALLEL_VERIFY = 2


class AuthRefused(Exception):
    """A CONNECT refused; `reason` is a fixed code (the metric label)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BrokerSecurity:
    def __init__(self, auth: AuthConfig, acl: AclConfig, host: str, metrics: Metrics) -> None:
        self.allow_anonymous = auth.allow_anonymous if auth.allow_anonymous is not None else is_loopback(host)
        self._password_path = Path(auth.password_file) if auth.password_file else None
        self._passwords: PasswordFile | None = None
        self._acl = Acl(acl)
        self._metrics = metrics
        self._verify_slots: asyncio.Semaphore | None = None

    def load(self) -> None:
        """Read the password file; raises `PasswordFileError`."""
        if self._password_path is not None:
            self._passwords = PasswordFile(self._password_path).load()
            log.info("password file loaded", extra={"users": len(self._passwords.users)})

    async def authenticate(
        self, client_id: str, remote: str, username: str | None, password: str | bytes | None, peer_cn: str | None
    ) -> Identity | None:
        """The identity of a connecting client, or None (refused: counted and logged)."""
        try:
            return await self._authenticate(username, password, peer_cn)
        except AuthRefused as exc:
            self.count_refusal(client_id, remote, exc.reason)
            return None

    def count_refusal(self, client_id: str, remote: str, reason: str) -> None:
        self._metrics.auth_failures.labels(reason).inc()
        log.warning("connection refused", extra={"client_id": client_id[:128], "remote": remote, "reason": reason})

    async def _authenticate(self, username: str | None, password: str | bytes | None, peer_cn: str | None) -> Identity:
        if peer_cn is not None:
            if username_problem(peer_cn):
                raise AuthRefused("certificate_name")
            if username and username != peer_cn:
                raise AuthRefused("username_mismatch")
            return Identity(peer_cn, "device", "certificate")
        if username and self._passwords is not None:
            secret = password.decode("utf-8", "replace") if isinstance(password, bytes) else (password or "")
            if self._verify_slots is None:
                self._verify_slots = asyncio.Semaphore(_MAX_PARALLEL_VERIFY)
            async with self._verify_slots:
                user = await asyncio.to_thread(self._passwords.verify, username, secret)
            if user is None:
                raise AuthRefused("bad_credentials")
            return Identity(user.name, user.role, "password")
        if not self.allow_anonymous:
            raise AuthRefused("anonymous")
        return ANONYMOUS

    def authorize(self, identity: Identity, action: str, topic: str, client_id: str) -> bool:
        """May `identity` do `action` (publish, subscribe, receive) on `topic`? A refused publish or
        subscription is counted and logged; a refused receive (forwarding) is only filtered."""
        if action == "publish":
            allowed = self._acl.may_publish(identity, topic)
        elif action == "subscribe":
            allowed = self._acl.may_subscribe(identity, topic)
        else:
            return self._acl.may_receive(identity, topic)
        if not allowed:
            self._metrics.acl_denied.labels(action).inc()
            log.warning(
                f"{action} refused by the ACL",
                extra={"client_id": client_id, "identity": identity.name, "topic": topic[:256], "action": action},
            )
        return allowed
