"""Wiring of the history service."""

import logging
from datetime import timedelta
from typing import Any

from faststream import FastStream
from prometheus_client import CollectorRegistry

from contracts import subjects
from services.history.cache import Cache, CacheMetrics
from services.history.cache_backends import CacheBackend, MemoryBackend, RedisBackend
from services.history.config import Settings
from services.history.models import DATABASE, SCHEMA
from services.history.outbox import Publisher, Relay
from services.history.service import HistoryService
from services.history.store import Store
from services.history.subscribers import build_responder
from services.runtime.bus import ensure_streams, make_broker
from services.runtime.deadletter import DeadLetterPublisher
from services.runtime.metrics import ServiceMetrics
from services.runtime.sql import database
from services.runtime.telemetry import Observability, Telemetry

# Where history's outbox publishes (session events, chat jobs) and its dead letters go.
STREAMS = (
    subjects.SESSION_EVENTS_STREAM,
    subjects.CHAT_JOBS_STREAM,
    subjects.DEADLETTER_STREAM,
)


def make_cache(settings: Settings, registry: CollectorRegistry, logger: Any = None) -> Cache:
    """Build the read cache: Redis when ``REDIS_URL`` is set, else an in-process LRU."""
    backend: CacheBackend
    if settings.redis_url:
        backend = RedisBackend(
            settings.redis_url,
            timeout=settings.redis_timeout,
            max_connections=settings.redis_max_connections,
        )
    else:
        backend = MemoryBackend(settings.cache_max_entries)
    return Cache(
        backend,
        CacheMetrics(registry),
        ttl=settings.cache_ttl_seconds,
        timeout=settings.redis_timeout,
        retry_interval=settings.redis_retry_interval,
        namespace=settings.cache_namespace,
        logger=logger,
    )


def make_relay(settings: Settings, store: Store, publisher: Publisher) -> Relay:
    """Build the outbox relay from settings."""
    return Relay(
        store,
        publisher,
        interval=settings.outbox_interval,
        publish_timeout=settings.event_publish_timeout,
        retention=timedelta(seconds=settings.outbox_retention_seconds),
    )


def create_app(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    telemetry: Telemetry | None = None,
) -> FastStream:
    """Build the history service: database, cache, outbox relay, broker, subscribers."""
    observability = Observability(
        settings, "history", metrics=ServiceMetrics("history", registry), telemetry=telemetry
    )
    registry = observability.metrics.registry
    # Nobody reads the bus metrics of a process that does not serve them: not collected.
    broker = make_broker(
        settings, "history", observability.broker_middlewares(metrics=observability.served)
    )
    bus = observability.bus_client(broker, settings.bus_request_timeout)
    sql = database(
        settings.database_url,
        schema=SCHEMA,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    store = Store(sql)
    cache = make_cache(settings, registry)
    relay = make_relay(settings, store, bus)
    # The relay's timer leaves a just-admitted job to the publish after its commit this long.
    lease = max(10.0, 2 * settings.event_publish_timeout)
    service = HistoryService(store, cache, relay, instance=settings.instance, lease=lease)
    responder = build_responder(
        service,
        DeadLetterPublisher(bus, "history"),
        concurrency=settings.request_concurrency,
        observer=observability.request_observer(),
    )
    app = FastStream(broker, logger=logging.getLogger("chatbus.history.app"))

    @app.on_startup
    async def prepare() -> None:
        # Schema and streams exist before the first request is taken.
        await DATABASE.migrate(settings.database_url)
        await sql.open()
        await broker.connect()
        await ensure_streams(broker, STREAMS)

    @app.after_startup
    async def start_relay() -> None:
        await responder.start(broker.connection)
        # Subscriptions reach the server before anyone is told this replica answers.
        await broker.connection.flush()
        # Events left pending by a crash are published on the first tick.
        relay.start()
        relay.wake()
        observability.start()

    @app.on_shutdown
    async def stop_relay() -> None:
        await responder.stop()
        await relay.stop()

    @app.after_shutdown
    async def close() -> None:
        await cache.aclose()
        await sql.close()
        await observability.stop()

    return app
