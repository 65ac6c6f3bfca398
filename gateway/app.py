"""The gateway process: builds the pipeline from settings and runs it in one TaskGroup.

    ingress ──▶ decode+validate ──▶ topic "telemetry" ──▶ subscription ──▶ SinkRunner ──▶ sink
                       └──────────▶ topic "deadletter" ──▶ subscription ──▶ SinkRunner ──▶ dead-letter file

Lifecycle guarantees:
* Construction does no I/O; `run()` opens the admin endpoint, starts the sink runners,
  then the ingress, and returns after a stop request (`request_stop()`, SIGTERM, SIGINT).
* Drain on stop: the ingress stops accepting first; then the telemetry subscriptions are
  given until `shutdown.drain_timeout` to be written, then the dead-letter
  subscriptions (the telemetry sinks may still produce dead letters). What is still
  held after the timeout is reported in the log; the memory bus cannot keep it across the
  exit, and says how many messages that was.
* A fatal setup error (port in use, ...) ends `run()` with `StartupError` carrying the
  operator's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from gateway.admin.server import AdminServer, AdminServerError, Readiness
from gateway.bus.sqlite import BusOpenError, SQLiteBus
from gateway.core.bus import OutgoingMessage
from gateway.core.message import RawMessage
from gateway.core.metrics import Metrics
from gateway.core.sink_runner import SinkRunner
from gateway.ingest import hand_over_batch, handle_batch, telemetry_messages
from gateway.ingress.base import Ingress, IngressError
from gateway.ingress.client import ClientIngress
from gateway.ingress.embedded import EmbeddedIngress
from gateway.ingress.topics import TopicRouter
from gateway.pipeline import build_bus, build_ingress, build_sink_runners
from gateway.processors.admin_routes import processor_routes
from gateway.processors.build import build_processors
from gateway.processors.meta_topics import handle_meta_message
from gateway.processors.reload import ConfigReloader
from gateway.replay_routes import replay_routes
from gateway.security.guard import Guard
from gateway.settings import (
    ALERTS_TOPIC,
    DEADLETTER_TOPIC,
    INTERNAL_TOPICS,
    INVALIDATIONS_TOPIC,
    TELEMETRY_TOPIC,
    GatewaySettings,
)
from gateway.sinks.mqtt_publish import MQTTPublishSinkConfig
from gateway.validation.decode import Decoder

log = logging.getLogger("gateway")


class StartupError(Exception):
    """The gateway could not start; the message is for the operator."""


class Gateway:
    def __init__(
        self, settings: GatewaySettings, metrics: Metrics | None = None, config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.bus = build_bus(settings, self.metrics)
        self.router = TopicRouter(settings.routes)
        self.decoder = Decoder(self.router, settings.schemas, settings.validation)
        self.guard = Guard(settings.security, self.router, self.metrics)
        self.ingress: Ingress = build_ingress(settings, self.router, self.metrics)
        if isinstance(self.ingress, ClientIngress | EmbeddedIngress):  # several messages per bus publish (ingest)
            self.ingress.batch_handler = functools.partial(handle_batch, self)
        if isinstance(self.ingress, ClientIngress):  # pipelined: hands a batch over while the previous one commits
            self.ingress.staged_handler = functools.partial(hand_over_batch, self)
        self.runners: list[SinkRunner] = build_sink_runners(settings, self.bus, self.metrics)
        # alerts and cache invalidation (gateway.processors): processors run like sinks, on telemetry
        self.processors = build_processors(settings, self.bus, self.metrics, self.runners)
        sinks = {r.name: r.sink for r in self.runners}
        self.runners += self.processors.runners
        self.reloader = None if config_path is None else ConfigReloader(
            config_path, settings, self.processors.engine, self.processors.detector, sinks, self.metrics
        )  # fmt: skip
        self.telemetry_unordered = not any(  # readings of several devices may share a bus message (ingest)
            sub.ordering for sub in settings.bus.subscriptions.values() if sub.topic == TELEMETRY_TOPIC
        )
        self._own_clients = {  # the gateway's MQTT forwarders: their publishes are not telemetry
            s.effective_client_id for s in settings.sinks.values() if isinstance(s, MQTTPublishSinkConfig)
        }
        self.admin = AdminServer(
            settings.admin.host,
            settings.admin.port,
            self.metrics,
            self.readiness,
            self.refresh_metrics,
            token=settings.admin.token,
        )
        self.admin.add_route_hook(processor_routes(self.processors.engine, self.processors.detector))
        self.admin.add_route_hook(replay_routes(self))  # seek, dead-letter replay
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._messages_valid = self.metrics.messages_valid
        self._readings_valid = self.metrics.readings_valid

    # -- the hot path -------------------------------------------------------------------
    async def handle(self, raw: RawMessage) -> None:
        """Decode one MQTT message and put its readings and dead letters on the bus.

        Returns once everything it produced is held by the bus: the ingress may then
        acknowledge the message. Waits (backpressure) while a subscription is full.
        """
        if self._own_clients and raw.client_id in self._own_clients:
            return
        refused = self.guard.check(raw)
        if refused is None and self.processors.meta and self.processors.detector is not None:
            device_id = self.processors.meta.device_of(raw.topic)
            if device_id is not None:
                refused = await handle_meta_message(self.processors.detector, raw, device_id)
                if refused is None:
                    return
        if refused is not None:
            self.metrics.messages_invalid.labels(refused.code).inc()
            await self.bus.publish(DEADLETTER_TOPIC, [OutgoingMessage(refused, len(refused.payload) + 256)])
            return
        result = self.decoder.decode(raw)
        readings = result.readings
        if readings:
            await self.bus.publish(TELEMETRY_TOPIC, telemetry_messages(readings, len(raw.payload)))
            self._readings_valid.inc(len(readings))
        if not result.rejects:
            self._messages_valid.inc()
            return
        for rejection in result.rejects:
            self.metrics.messages_invalid.labels(rejection.code).inc()
        await self.bus.publish(
            DEADLETTER_TOPIC, [OutgoingMessage(r.dead_letter, len(r.dead_letter.payload) + 256) for r in result.rejects]
        )

    # -- lifecycle ----------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            if self.reloader is not None:
                loop.add_signal_handler(signal.SIGHUP, self.reloader.reload)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self._open_bus()
        for topic in INTERNAL_TOPICS:
            self.bus.create_topic(topic)
        for sub in self.settings.bus.subscriptions.values():
            self.bus.create_subscription(sub)
        try:
            if self.settings.admin.enabled:
                await self.admin.start()
            async with asyncio.TaskGroup() as tg:
                for runner in self.runners:
                    tg.create_task(runner.run(), name=f"sink:{runner.name}")
                for standalone in self.processors.standalone:
                    await standalone.start()
                if self.reloader is not None:
                    watcher = tg.create_task(self.reloader.watch(2.0), name="config-watch")
                ingress_task = tg.create_task(self.ingress.run(self.handle), name=f"ingress:{self.ingress.name}")
                await self._wait_started_or_failed(ingress_task)
                self._started.set()
                log.info(
                    "gateway running", extra={"ingress": self.ingress.name, "sinks": [r.name for r in self.runners]}
                )
                stop_task = tg.create_task(self._stop.wait(), name="stop-request")
                await asyncio.wait([stop_task, ingress_task], return_when=asyncio.FIRST_COMPLETED)
                if self.reloader is not None:
                    watcher.cancel()
                await self._drain()
        except* IngressError as eg:
            raise StartupError(str(eg.exceptions[0])) from None
        except* AdminServerError as eg:
            raise StartupError(str(eg.exceptions[0])) from None
        finally:
            await self.admin.stop()
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

    async def _wait_started_or_failed(self, ingress_task: asyncio.Task[None]) -> None:
        started = asyncio.ensure_future(self.ingress.wait_started())
        await asyncio.wait([started, ingress_task], return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            started.cancel()
        elif started.exception() is not None and ingress_task.done():
            pass  # the same setup error; raised from the task below
        if ingress_task.done():
            ingress_task.result()  # re-raises the setup error
        started.result()

    async def _drain(self) -> None:
        timeout = self.settings.shutdown.drain_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        log.info("stopping: ingress first, then draining subscriptions", extra={"drain_timeout_s": timeout})
        await self.ingress.stop()
        self.bus.flush()
        subs = self.settings.bus.subscriptions
        for standalone in self.processors.standalone:
            await standalone.close()
        for topic in (TELEMETRY_TOPIC, ALERTS_TOPIC, INVALIDATIONS_TOPIC, DEADLETTER_TOPIC):
            names = [n for n, s in subs.items() if s.topic == topic]
            await self._wait_empty(names, deadline)
            runners = [r for r in self.runners if r.subscription in names]
            remaining = max(0.1, deadline - time.monotonic())
            await asyncio.gather(*(r.stop(timedelta(seconds=remaining)) for r in runners))
            if topic == TELEMETRY_TOPIC:  # pending invalidations, before their forwarders drain
                await self.processors.flush(self.bus)
        left = {n: self.bus.stats(n).backlog for n in subs}
        if any(left.values()) and isinstance(self.bus, SQLiteBus):
            log.warning(
                "stopped with undelivered messages, kept in the bus database for the next start",
                extra={"backlog": left},
            )
        elif any(left.values()):
            log.error(
                "stopped with undelivered messages (memory bus: not kept across restarts)", extra={"backlog": left}
            )
        else:
            log.info("stopped cleanly: every subscription drained")
        await self.bus.close()

    async def _open_bus(self) -> None:
        """Open the durable bus (no-op for the memory bus); report what recovery could not save."""
        if not isinstance(self.bus, SQLiteBus):
            return
        try:
            await self.bus.open()
        except BusOpenError as exc:
            raise StartupError(f"bus database {self.bus.path}: {exc}") from None
        report = self.bus.recovery_report
        if report is not None and report.corrupt:
            log.error(
                "bus database was damaged: moved aside and recovered",
                extra={
                    "moved_to": str(report.moved_to),
                    "problems": list(report.problems),
                    "messages_recovered": report.messages_recovered,
                    "lost": list(report.lost) or "nothing",
                },
            )

    async def _wait_empty(self, names: Sequence[str], deadline: float) -> None:
        while time.monotonic() < deadline:
            if all(self.bus.stats(n).backlog == 0 for n in names):
                return
            await asyncio.sleep(0.05)

    # -- observability ------------------------------------------------------------------
    def readiness(self) -> Readiness:
        sinks = {r.name: r.healthy() for r in self.runners}
        ready = self._started.is_set() and not self._stop.is_set() and self.ingress.connected and all(sinks.values())
        return Readiness(ready, {"ingress_connected": self.ingress.connected, "sinks": sinks})

    def refresh_metrics(self) -> None:
        with contextlib.suppress(Exception):
            self.bus.refresh_metrics()
