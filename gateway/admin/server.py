"""The admin HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.

* `/healthz` answers 200 while the gateway's event loop makes progress (liveness), and 503
  when it has not run a callback for `STALL_AFTER_S` seconds (the body says how long).
* `/readyz` answers 200 when the ingress is connected (client mode) or listening
  (embedded mode) and every sink is healthy, else 503; the JSON body says which part is not.
* `/metrics` is the Prometheus text exposition of the gateway's own registry
  (`?name[]=a&name[]=b`: only those series). Gauges that are copied from the bus
  (`refresh`) are refreshed by the event loop every `BEAT_S`.

The endpoint runs on its own thread and event loop ("admin"), so that it answers in
milliseconds while the gateway's loop is busy draining a burst: a liveness probe must not
time out because the gateway is working hard. It asks the gateway's loop for a heartbeat
every `BEAT_S`; `readiness` and the metrics registry are read from the admin thread (plain
attribute reads, and prometheus_client is thread-safe); `refresh` and route hooks run on the
gateway's loop.

A deliberately small HTTP/1.1 server on asyncio streams (GET only, one request per
connection, 8 KiB request limit): the endpoint must not pull a web framework into the
gateway. It is bound to loopback by default.

With `admin.token` set (required by the config when the host is not loopback), every path
but `/healthz` and `/metrics` needs `Authorization: Bearer <token>`, compared in constant
time (`hmac.compare_digest`); a refusal is a 401 counted in `gateway_admin_unauthorized_total`.
The token is never logged or echoed.

Route hooks (`add_route_hook`) extend the endpoint without touching it: each hook is
awaited on the gateway's loop with (method, path, body) before the built-in routes and
answers (status, body, content type), or None to pass; one that takes longer than
`HOOK_TIMEOUT_S` is answered 503. They also receive `PUT` and `POST` requests (body up to
64 KiB, by `Content-Length`); the bearer token check applies to them as to every non-public
path. Used for `GET /alerts` and `PUT /devices/{id}/meta` (`gateway.processors.admin_routes`),
`POST /subscriptions/{name}/seek` and `POST /deadletters/replay` (`gateway.replay_routes`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from gateway.core.metrics import Metrics

log = logging.getLogger(__name__)
_PUBLIC = ("/healthz", "/metrics")  # everything else needs the bearer token when one is configured
_MAX_HEADERS = 100
_MAX_BODY = 64 * 1024
_WITH_BODY = ("PUT", "POST")  # methods only route hooks answer
BEAT_S = 0.5  # how often the gateway's loop is asked for a heartbeat (and refreshes the bus gauges)
STALL_AFTER_S = 10.0  # /healthz fails when the gateway's loop has not answered for this long
HOOK_TIMEOUT_S = 60.0
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
        self._main: asyncio.AbstractEventLoop | None = None  # the gateway's loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the admin thread's loop
        self._thread: threading.Thread | None = None
        self._beat = time.monotonic()  # when the gateway's loop last ran our heartbeat

    def add_route_hook(self, hook: RouteHook) -> None:
        """Answer some requests before the built-in routes (see the module docstring)."""
        self._hooks.append(hook)

    async def start(self) -> None:
        """Listen, on the admin thread; AdminServerError when the address cannot be bound."""
        self._main = asyncio.get_running_loop()
        self._beat = time.monotonic()
        listening: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(listening,), name="admin", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(listening)
        log.info("admin endpoint listening", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        """Stop listening and end the admin thread (requests in progress get up to 2 s). Idempotent."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        if self._server is not None:  # None: it never listened (start failed), the thread ends by itself
            closing = self._close()
            try:
                await asyncio.wait_for(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(closing, loop)), 3)
            except RuntimeError:  # the loop closed meanwhile
                closing.close()
            except TimeoutError:
                pass
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 5)

    # -- the admin thread ---------------------------------------------------------------
    def _serve(self, listening: concurrent.futures.Future[None]) -> None:
        loop = self._loop = asyncio.new_event_loop()  # before `start` returns: `stop` needs it
        try:
            loop.run_until_complete(self._listen(listening))
            if listening.exception() is None:
                beat = loop.create_task(self._heartbeat(), name="admin-heartbeat")
                loop.run_forever()
                beat.cancel()
                loop.run_until_complete(asyncio.gather(beat, return_exceptions=True))
        finally:
            loop.close()

    async def _listen(self, listening: concurrent.futures.Future[None]) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=8192)
        except OSError as exc:
            error = AdminServerError(f"admin.port: cannot listen on {self.host}:{self.port}: {exc.strerror}")
            listening.set_exception(error)
            return
        self.port = int(self._server.sockets[0].getsockname()[1])
        listening.set_result(None)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _heartbeat(self) -> None:
        """Ask the gateway's loop, every BEAT_S, to note that it runs and to refresh the gauges."""
        assert self._main is not None
        while True:
            with contextlib.suppress(RuntimeError):  # the gateway's loop is closed: the beat stops
                self._main.call_soon_threadsafe(self._on_beat)
            await asyncio.sleep(BEAT_S)

    def _on_beat(self) -> None:  # on the gateway's loop
        self._beat = time.monotonic()
        with contextlib.suppress(Exception):
            self._refresh()

    async def _run_hooks(self, method: str, target: str, body: bytes) -> tuple[int, bytes, str] | None:
        """The first hook's answer, awaited on the gateway's loop (503 if it takes too long)."""
        if not self._hooks or self._main is None:
            return None

        async def ask() -> tuple[int, bytes, str] | None:
            for hook in self._hooks:
                answer = await hook(method, target, body)
                if answer is not None:
                    return answer
            return None

        future = asyncio.run_coroutine_threadsafe(ask(), self._main)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), HOOK_TIMEOUT_S)
        except TimeoutError:
            return 503, f"the gateway did not answer within {HOOK_TIMEOUT_S:.0f} s\n".encode(), "text/plain"

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
            method = parts[0]
            target, _, query = parts[1].partition("?")
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
            answer = await self._run_hooks(method, target, body)
            if answer is not None:
                await self._send(writer, answer[0], b"" if method == "HEAD" else answer[1], answer[2])
                return
            if method in _WITH_BODY:
                await self._send(writer, 405, f"{method} is not supported on this path\n".encode())
                return
            status, body, ctype = self._route(target, query)
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

    def _route(self, target: str, query: str = "") -> tuple[int, bytes, str]:
        if target == "/healthz":
            stalled = time.monotonic() - self._beat
            if stalled > STALL_AFTER_S:
                return 503, f"event loop stalled: no progress for {stalled:.0f} s\n".encode(), "text/plain"
            return 200, b"ok\n", "text/plain"
        if target == "/readyz":
            r = self._readiness()
            return (200 if r.ready else 503), orjson.dumps({"ready": r.ready, **r.detail}), "application/json"
        if target == "/metrics":
            # `?name[]=a&name[]=b`: only those series, as prometheus_client's own handler allows
            names = parse_qs(query).get("name[]")
            registry = self._metrics.registry.restricted_registry(names) if names else self._metrics.registry
            return 200, generate_latest(registry), CONTENT_TYPE_LATEST
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
