"""Component factories: from typed config to ingress and sink runners (no I/O)."""

from __future__ import annotations

from gateway.bus.memory import MemoryBus
from gateway.bus.sqlite import SQLiteBus
from gateway.core.bus import Bus
from gateway.core.metrics import Metrics
from gateway.core.sink import Sink
from gateway.core.sink_runner import RunnerConfig, SinkRunner
from gateway.ingress.base import Ingress
from gateway.ingress.client import ClientIngress
from gateway.ingress.config import ClientIngressConfig, EmbeddedIngressConfig
from gateway.ingress.embedded import EmbeddedIngress
from gateway.ingress.topics import TopicRouter
from gateway.processors.meta_topics import MetaTopics
from gateway.settings import DEADLETTER_TOPIC, GatewaySettings, SinkConfig
from gateway.sinks.deadletter_file import DeadLetterFileConfig, DeadLetterFileSink
from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
from gateway.sinks.log import LogSink, LogSinkConfig
from gateway.sinks.mqtt_publish import MQTTPublishSink, MQTTPublishSinkConfig
from gateway.sinks.redis import RedisSink, RedisSinkConfig
from gateway.sinks.sqlite_store import SQLiteStoreConfig, SQLiteStoreSink
from gateway.sinks.webhook import WebhookSink, WebhookSinkConfig


def build_bus(settings: GatewaySettings, metrics: Metrics) -> MemoryBus | SQLiteBus:
    """The internal topics' backend (`bus.type`); the sqlite bus must be `open()`ed before use."""
    if settings.bus.type == "memory":
        return MemoryBus(metrics)
    return SQLiteBus(settings.bus.sqlite, settings.data_dir, metrics)


def build_ingress(settings: GatewaySettings, router: TopicRouter, metrics: Metrics) -> Ingress:
    cfg = settings.ingress
    if isinstance(cfg, EmbeddedIngressConfig):
        return EmbeddedIngress(cfg, metrics)
    if isinstance(cfg, ClientIngressConfig):
        meta = settings.invalidation.meta_topics if settings.invalidation is not None else []
        filters = router.subscription_filters() + MetaTopics(meta).subscription_filters()
        return ClientIngress(cfg, list(dict.fromkeys(filters)), metrics)
    raise TypeError(f"unknown ingress config {type(cfg).__name__}")


def build_sink(cfg: SinkConfig, settings: GatewaySettings) -> Sink:
    if isinstance(cfg, InfluxDBSinkConfig):
        return InfluxDBSink(cfg, settings.data_dir)
    if isinstance(cfg, SQLiteStoreConfig):
        return SQLiteStoreSink(cfg, settings.data_dir)
    if isinstance(cfg, DeadLetterFileConfig):
        return DeadLetterFileSink(cfg, settings.data_dir)
    if isinstance(cfg, LogSinkConfig):
        return LogSink(cfg, settings.data_dir)
    if isinstance(cfg, WebhookSinkConfig):
        return WebhookSink(cfg, settings.data_dir)
    if isinstance(cfg, MQTTPublishSinkConfig):
        return MQTTPublishSink(cfg, settings.data_dir)
    if isinstance(cfg, RedisSinkConfig):
        return RedisSink(cfg, settings.data_dir)
    raise TypeError(f"unknown sink config {type(cfg).__name__}")


def build_sink_runners(settings: GatewaySettings, bus: Bus, metrics: Metrics) -> list[SinkRunner]:
    """One runner per sink. A sink fed from the deadletter topic has no dead-letter topic
    of its own (it cannot dead-letter into itself); its permanent failures are logged and
    counted as `gateway_sink_failed`."""
    runners = []
    for cfg in settings.sinks.values():
        sub = settings.bus.subscriptions[cfg.subscription]
        runner_cfg: RunnerConfig = cfg.runner
        if sub.topic == DEADLETTER_TOPIC:
            runner_cfg = runner_cfg.model_copy(update={"dead_letter_topic": None})
        runners.append(SinkRunner(build_sink(cfg, settings), bus, cfg.subscription, metrics, runner_cfg))
    return runners
