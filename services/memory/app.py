"""Wiring of the memory service."""

import logging

import structlog
from faststream import FastStream
from faststream.nats import NatsBroker

from contracts import subjects
from services.memory.bus import BusEvents, BusHistory
from services.memory.config import Settings
from services.memory.db import make_engine, migrate
from services.memory.llm import OpenAIExtractor
from services.memory.service import MemoryService
from services.memory.store import Store
from services.memory.subscribers import build_router, consumer_config
from services.runtime.bus import BusClient, ensure_streams, make_broker
from services.runtime.deadletter import DeadLetterPublisher

log = structlog.get_logger("chatbus.memory")
STREAMS = (
    subjects.SESSION_EVENTS_STREAM,
    subjects.MEMORY_EVENTS_STREAM,
    subjects.DEADLETTER_STREAM,
)
CONSUMERS = (
    (subjects.MEMORY_ARCHIVED_DURABLE, subjects.SESSION_ARCHIVED),
    (subjects.MEMORY_DELETED_DURABLE, subjects.SESSION_DELETED),
)


async def ensure_consumers(broker: NatsBroker, settings: Settings) -> None:
    """Create the durable consumers, or bring an existing one's limits up to date."""
    js = broker.connection.jetstream()
    for durable, subject in CONSUMERS:
        # Binding alone would keep an old ack_wait; create-or-update applies the current one.
        await js.add_consumer(
            subjects.SESSION_EVENTS_STREAM.name, consumer_config(settings, durable, subject)
        )


def create_app(settings: Settings) -> FastStream:
    """Build the memory service: database, model client, broker, subscribers."""
    broker = make_broker(settings, "memory")
    bus = BusClient(broker, settings.bus_request_timeout)
    engine = make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    extractor = OpenAIExtractor(settings)
    service = MemoryService(
        Store(engine),
        BusHistory(bus, settings.bus_request_timeout),
        extractor,
        BusEvents(bus, settings.event_publish_timeout),
        instance=settings.instance,
        max_per_session=settings.memory_max_per_session,
        heartbeat_interval=settings.heartbeat_interval,
    )
    broker.include_router(build_router(settings, service, DeadLetterPublisher(bus, "memory")))
    app = FastStream(broker, logger=logging.getLogger("chatbus.memory.app"))

    @app.on_startup
    async def prepare() -> None:
        # Schema, streams and consumers exist before the first message is taken.
        await migrate(settings.database_url)
        await broker.connect()
        await ensure_streams(broker, STREAMS)
        await ensure_consumers(broker, settings)

    @app.after_startup
    async def announce() -> None:
        # Subscriptions reach the server before anyone is told this replica answers.
        await broker.connection.flush()
        log.info(
            "memory started",
            model=settings.llm_model,
            base_url=settings.openai_base_url or "https://api.openai.com/v1",
            max_attempts=settings.memory_max_attempts,
        )

    @app.after_shutdown
    async def close() -> None:
        await extractor.close()
        await engine.dispose()

    return app
