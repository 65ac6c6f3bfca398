"""`SecureBroker`: amqtt 0.12's broker with the gateway's authentication, ACL and TLS.

amqtt's plugin hooks are not used: its plugin manager creates a task per plugin for every
publish, and it looks up, deletes (clean session) or takes over the session of a client id
*before* authenticating the CONNECT, so a refused client could still disconnect a device or
wipe its persistent session. Here a CONNECT is authenticated right after it is read, and a
refused client is answered `CONNACK 5 (not authorized)` and closed before any session is
touched. Overridden amqtt internals (checked against amqtt 0.12): `_initialize_client_session`
(amqtt's body, with authentication first), `_authenticate`, `_topic_filtering`,
`_create_ssl_context`.

Guarantees:
* Every session that reaches the message loop carries its `Identity` (`identity_of`).
* A client id belongs to the identity whose session holds it (connected, or persistent and
  disconnected): another identity using it is refused before it can take the connection over
  or clear the session (`gateway_auth_failures_total{reason="session_owner"}`).
* Publish, subscribe and forwarding are checked by the ACL (`BrokerSecurity.authorize`).
"""

from __future__ import annotations

import ssl
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.utils import gen_client_id

from gateway.ingress.amqtt_ack import AckAfterHandoverHandler
from gateway.security.broker_auth import BrokerSecurity
from gateway.security.identity import Identity
from gateway.security.tls import peer_common_name

IDENTITY_KEY = "gateway.identity"
_ACTIONS = {Action.PUBLISH: "publish", Action.SUBSCRIBE: "subscribe", Action.RECEIVE: "receive"}


def identity_of(session: Any) -> Identity | None:
    identity = session.attributes.get(IDENTITY_KEY) if session is not None else None
    return identity if isinstance(identity, Identity) else None


class SecureBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    def __init__(self, config: dict[str, Any], security: BrokerSecurity, tls: ssl.SSLContext | None) -> None:
        super().__init__(config)
        self._security = security
        self._tls = tls

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext | None:
        return self._tls

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        try:
            handler, incoming = await AckAfterHandoverHandler.init_from_connect(reader, writer, self.plugins_manager)
        except AMQTTError as exc:
            raise AMQTTError(exc) from exc
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except NoDataError as exc:
            raise AMQTTError(exc) from exc

        client_id = incoming.client_id or ""
        identity = await self._security.authenticate(
            client_id,
            f"{remote_address}:{remote_port}",
            incoming.username,
            incoming.password,
            peer_common_name(writer.get_ssl_info()),
        )
        if identity is None:
            await self._refuse(writer)
            raise AMQTTError("connection not authorized")
        previous = self._sessions.get(client_id) if client_id else None
        owner = identity_of(previous[0]) if previous is not None else None
        if owner is not None and owner != identity:
            self._security.count_refusal(client_id, f"{remote_address}:{remote_port}", "session_owner")
            await self._refuse(writer)
            raise AMQTTError("client id belongs to another identity")

        # amqtt 0.12's session handling, unchanged.
        client_session = incoming
        if client_session.clean_session:
            if client_session.client_id is not None and client_session.client_id != "":
                await self._delete_session(client_session.client_id)
            else:
                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif previous is not None:  # the same identity resumes its persistent session
            existing = previous[0]
            existing.will_flag = incoming.will_flag
            existing.will_message = incoming.will_message
            existing.will_topic = incoming.will_topic
            existing.will_qos = incoming.will_qos
            existing.keep_alive = incoming.keep_alive
            existing.username = incoming.username
            existing.password = incoming.password
            client_session = existing
            client_session.parent = 1
        else:
            client_session.parent = 0
        client_session.password = None  # not kept beyond the check
        client_session.attributes[IDENTITY_KEY] = identity
        delay = self.config.get("timeout-disconnect-delay", 0)
        if client_session.keep_alive > 0 and isinstance(delay, int):
            client_session.keep_alive += delay
        return handler, client_session

    @staticmethod
    async def _refuse(writer: Any) -> None:
        try:
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
        finally:
            await writer.close()

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        return identity_of(session) is not None  # decided in _initialize_client_session

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        identity = identity_of(session)
        if identity is None:
            return False
        if not identity.restricted:
            return True
        return self._security.authorize(identity, _ACTIONS.get(action, "receive"), topic, session.client_id or "")
