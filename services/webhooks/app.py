"""Wiring of the webhooks service: database, HTTP sender, broker, request and pull edges."""

import logging

import structlog
from faststream import FastStream

from contracts import subjects
from services.runtime.bus import ensure_streams, make_broker
from services.runtime.deadletter import DeadLetterPublisher
from services.runtime.telemetry import Observability, Telemetry
from services.webhooks.config import Settings
from services.webhooks.consumer import PullConsumer
from services.webhooks.db import make_engine, migrate
from services.webhooks.sender import Sender
from services.webhooks.service import WebhookService
from services.webhooks.store import Store
from services.webhooks.subscribers import BusQueue, Handlers, build_responder, consumer_configs

log = structlog.get_logger("chatbus.webhooks")
STREAMS = (
    subjects.JOB_EVENTS_STREAM,
    subjects.MEMORY_EVENTS_STREAM,
    subjects.WEBHOOK_DELIVERIES_STREAM,
    subjects.DEADLETTER_STREAM,
)
EVENT_WORKERS = 8


def create_app(settings: Settings, telemetry: Telemetry | None = None) -> FastStream:
    """Build the webhooks service; nothing connects until it starts."""
    observability = Observability(settings, "webhooks", telemetry=telemetry)
    broker = make_broker(settings, "webhooks", observability.broker_middlewares())
    bus = observability.bus_client(broker, settings.bus_request_timeout)
    engine = make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    sender = Sender(settings.webhook_timeout)
    queue = BusQueue(bus, settings.bus_request_timeout)
    service = WebhookService(settings, Store(engine), sender, queue)
    dead_letters = DeadLetterPublisher(bus, "webhooks")
    responder = build_responder(
        settings, service, dead_letters, observer=observability.request_observer()
    )
    handlers = Handlers(service)
    consumers: list[PullConsumer] = []
    app = FastStream(broker, logger=logging.getLogger("chatbus.webhooks.app"))

    @app.on_startup
    async def prepare() -> None:
        await migrate(settings.database_url)
        await broker.connect()
        await ensure_streams(broker, STREAMS, settings)
        js = broker.connection.jetstream()
        for stream, config in consumer_configs(settings):
            # Binding alone would keep an old ack_wait; create-or-update applies the current one.
            await js.add_consumer(stream, config)

    @app.after_startup
    async def begin() -> None:
        await responder.start(broker.connection)
        await broker.connection.flush()
        observability.start()
        js = broker.connection.jetstream()
        fetch = settings.webhook_fetch_timeout
        for durable, stream, handler, workers in (
            (subjects.WEBHOOKS_JOBS_DURABLE, subjects.JOB_EVENTS_STREAM.name,
             handlers.job_event, EVENT_WORKERS),
            (subjects.WEBHOOKS_MEMORY_DURABLE, subjects.MEMORY_EVENTS_STREAM.name,
             handlers.memories_stored, EVENT_WORKERS),
            (subjects.WEBHOOKS_DELIVER_DURABLE, subjects.WEBHOOK_DELIVERIES_STREAM.name,
             handlers.deliver, settings.webhook_concurrency),
        ):
            consumer = PullConsumer(
                js, stream, durable, handler, workers=workers, fetch_timeout=fetch,
                dead_letters=dead_letters,
            )
            await consumer.start()
            consumers.append(consumer)
        log.info(
            "webhooks started", retry_hours=settings.webhook_retry_hours,
            allow_private=settings.webhook_allow_private,
        )

    @app.on_shutdown
    async def drain() -> None:
        await responder.stop()
        for consumer in consumers:
            await consumer.stop(settings.webhook_timeout)
        consumers.clear()

    @app.after_shutdown
    async def close() -> None:
        await sender.close()
        await engine.dispose()
        await observability.stop()

    return app
