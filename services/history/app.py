"""Wiring of the history service."""

import logging

from faststream import FastStream

from contracts import subjects
from services.history.config import Settings
from services.history.db import make_engine, migrate
from services.history.service import HistoryService
from services.history.store import Store
from services.history.subscribers import build_router
from services.runtime.bus import BusClient, ensure_streams, make_broker
from services.runtime.deadletter import DeadLetterPublisher


def create_app(settings: Settings) -> FastStream:
    """Build the history service: database, broker, streams, subscribers."""
    broker = make_broker(settings, "history")
    bus = BusClient(broker, settings.bus_request_timeout)
    engine = make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    service = HistoryService(
        Store(engine),
        bus,
        instance=settings.instance,
        publish_timeout=settings.event_publish_timeout,
    )
    router = build_router(
        service, DeadLetterPublisher(bus, "history"), max_workers=settings.request_concurrency
    )
    broker.include_router(router)
    app = FastStream(broker, logger=logging.getLogger("chatbus.history.app"))

    @app.on_startup
    async def prepare() -> None:
        # Schema and streams exist before the first request is taken.
        await migrate(settings.database_url)
        await broker.connect()
        await ensure_streams(broker, (subjects.SESSION_EVENTS_STREAM, subjects.DEADLETTER_STREAM))

    @app.after_shutdown
    async def close_database() -> None:
        await engine.dispose()

    return app
