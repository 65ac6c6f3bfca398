"""The admin HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.

* `/healthz` answers 200 while the process's event loop runs (liveness).
* `/readyz` answers 200 when the ingress is connected (client mode) or listening
  (embedded mode) and every sink is healthy, else 503; the JSON body says which part is not.
* `/metrics` is the Prometheus text exposition of the gateway's own registry.

A deliberately small HTTP/1.1 server on asyncio streams (GET only, one request per
connection, 8 KiB request limit): the endpoint must not pull a web framework into the
gateway. It is bound to loopback by default.

With `admin.token` set (required by the config when the host is not loopback), every path
but `/healthz` and `/metrics` needs `Authorization: Bearer <token>`, compared in constant
time (`hmac.compare_digest`); a refusal is a 401 counted in `gateway_admin_unauthorized_total`.
The token is never logged or echoed.

Route hooks (`add_route_hook`) extend the endpoint without touching it: each hook is
awaited with (method, path, body) before the built-in routes and answers (status, body,
content type), or None to pass. They also receive `PUT` and `POST` requests (body up to
64 KiB, by `Content-Length`); the bearer token check applies to them as to every non-public
path. Used for `GET /alerts` and `PUT /devices/{id}/meta` (`gateway.processors.admin_routes`),
`POST /subscriptions/{name}/seek` and `POST /deadletters/replay` (`gateway.replay_routes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from gateway.core.metrics import Metrics

log = logging.getLogger(__name__)
_PUBLIC = ("/healthz", "/metrics")  # everything else needs the bearer token when one is configured
_MAX_HEADERS = 100
_MAX_BODY = 64 * 1024
_WITH_BODY = ("PUT", "POST")  # methods only route hooks answer
RouteHook = Callable[[str, str, bytes], Awaitable[tuple[int, bytes, str] | None]]


@dataclass(slots=True)
class Readiness:
    ready: bool
    detail: dict[str, object]


class AdminServerError(Exception):
    """The endpoint could not listen (the message names host, port and the OS reason)."""


class AdminServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        readiness: Callable[[], Readiness],
        refresh: Callable[[], None],
        token: SecretStr | None = None,
    ) -> None:
        self.host = host
        self._token = token.get_secret_value().encode() if token is not None else None
        self.port = port
        self._metrics = metrics
        self._readiness = readiness
        self._refresh = refresh
        self._server: asyncio.Server | None = None
        self._hooks: list[RouteHook] = []

    def add_route_hook(self, hook: RouteHook) -> None:
        """Answer some requests before the built-in routes (see the module docstring)."""
        self._hooks.append(hook)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=8192)
        except OSError as exc:
            raise AdminServerError(f"admin.port: cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("admin endpoint listening", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            authorization = b""
            length = 0
            for _ in range(_MAX_HEADERS):
                line = await asyncio.wait_for(reader.readline(), 5)
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"authorization":
                    authorization = value.strip()
                elif name.strip().lower() == b"content-length":
                    length = int(value.strip())
            else:
                await self._send(writer, 400, b"too many headers\n")
                return
            parts = request_line.decode("latin-1").split()
            if len(parts) < 2:
                await self._send(writer, 400, b"bad request\n")
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD") and not (method in _WITH_BODY and self._hooks):
                await self._send(writer, 405, b"only GET\n")
                return
            if target not in _PUBLIC and not self._authorized(authorization):
                self._metrics.admin_unauthorized.inc()
                await self._send(writer, 401, b"unauthorized: send Authorization: Bearer <admin.token>\n")
                return
            if length > _MAX_BODY or length < 0:
                await self._send(writer, 413, b"request body too large\n")
                return
            body = await asyncio.wait_for(reader.readexactly(length), 5) if method in _WITH_BODY and length else b""
            for hook in self._hooks:
                answer = await hook(method, target, body)
                if answer is not None:
                    await self._send(writer, answer[0], b"" if method == "HEAD" else answer[1], answer[2])
                    return
            if method in _WITH_BODY:
                await self._send(writer, 405, f"{method} is not supported on this path\n".encode())
                return
            status, body, ctype = self._route(target)
            await self._send(writer, status, b"" if method == "HEAD" else body, ctype)
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _authorized(self, authorization: bytes) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)

    def _route(self, target: str) -> tuple[int, bytes, str]:
        if target == "/healthz":
            return 200, b"ok\n", "text/plain"
        if target == "/readyz":
            r = self._readiness()
            return (200 if r.ready else 503), orjson.dumps({"ready": r.ready, **r.detail}), "application/json"
        if target == "/metrics":
            self._refresh()
            return 200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST
        return 404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain"

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "text/plain") -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            405: "Method Not Allowed",
            409: "Conflict",
            413: "Content Too Large",
            422: "Unprocessable Content",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }
        head = (
            f"HTTP/1.1 {status} {reason.get(status, '')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
