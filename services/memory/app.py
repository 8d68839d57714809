"""Wiring of the memory service."""

import logging
from collections.abc import Sequence

import structlog
from faststream import FastStream
from faststream.nats import NatsBroker

from contracts import subjects
from contracts.history import MessageRecord
from services.memory.bus import BusEvents, BusHistory
from services.memory.config import Settings
from services.memory.llm import OpenAIExtractor
from services.memory.models import DATABASE, SCHEMA
from services.memory.service import MemoryService
from services.memory.store import Store
from services.memory.subscribers import build_responder, build_router, consumer_config
from services.runtime.bus import ensure_streams, make_broker
from services.runtime.deadletter import DeadLetterPublisher
from services.runtime.metrics import LLMMetrics
from services.runtime.sql import database
from services.runtime.telemetry import Observability, Telemetry

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


class ObservedExtractor:
    """The model client, timed."""

    def __init__(self, inner: OpenAIExtractor, metrics: LLMMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def extract(self, messages: Sequence[MessageRecord]) -> list[str]:
        """Return the memories the model finds in the conversation."""
        with self.metrics.timed():
            return await self.inner.extract(messages)


def create_app(settings: Settings, telemetry: Telemetry | None = None) -> FastStream:
    """Build the memory service: database, model client, broker, subscribers."""
    observability = Observability(settings, "memory", telemetry=telemetry)
    llm_metrics = observability.metrics.llm(settings.llm_model)
    # Nobody reads the bus metrics of a process that does not serve them: not collected.
    broker = make_broker(
        settings, "memory", observability.broker_middlewares(metrics=observability.served)
    )
    bus = observability.bus_client(broker, settings.bus_request_timeout)
    sql = database(
        settings.database_url,
        schema=SCHEMA,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    extractor = OpenAIExtractor(settings, on_usage=llm_metrics.record_usage)
    service = MemoryService(
        Store(sql),
        BusHistory(bus, settings.bus_request_timeout),
        ObservedExtractor(extractor, llm_metrics),
        BusEvents(bus, settings.event_publish_timeout),
        instance=settings.instance,
        max_per_session=settings.memory_max_per_session,
        heartbeat_interval=settings.heartbeat_interval,
    )
    deadletters = DeadLetterPublisher(bus, "memory")
    broker.include_router(build_router(settings, service, deadletters))
    responder = build_responder(
        settings, service, deadletters, observability.request_observer()
    )
    app = FastStream(broker, logger=logging.getLogger("chatbus.memory.app"))

    @app.on_startup
    async def prepare() -> None:
        # Schema, streams and consumers exist before the first message is taken.
        await DATABASE.migrate(settings.database_url)
        await sql.open()
        await broker.connect()
        await ensure_streams(broker, STREAMS)
        await ensure_consumers(broker, settings)

    @app.after_startup
    async def announce() -> None:
        await responder.start(broker.connection)
        # Subscriptions reach the server before anyone is told this replica answers.
        await broker.connection.flush()
        observability.start()
        log.info(
            "memory started",
            model=settings.llm_model,
            base_url=settings.openai_base_url or "https://api.openai.com/v1",
            max_attempts=settings.memory_max_attempts,
        )

    @app.on_shutdown
    async def stop_answering() -> None:
        await responder.stop()

    @app.after_shutdown
    async def close() -> None:
        await extractor.close()
        await sql.close()
        await observability.stop()

    return app
