"""Wiring of the memory service."""

from faststream import FastStream

from contracts import subjects
from services.memory.config import Settings
from services.memory.service import MemoryService
from services.memory.subscribers import build_router
from services.runtime.bus import BusClient, ensure_streams, make_broker
from services.runtime.deadletter import DeadLetterPublisher


def create_app(settings: Settings) -> FastStream:
    """Build the memory service: broker, streams, subscribers."""
    broker = make_broker(settings, "memory")
    bus = BusClient(broker, settings.bus_request_timeout)
    service = MemoryService()
    broker.include_router(build_router(settings, service, DeadLetterPublisher(bus, "memory")))
    app = FastStream(broker)

    @app.on_startup
    async def declare_streams() -> None:
        await broker.connect()
        await ensure_streams(broker, (subjects.SESSION_EVENTS_STREAM, subjects.DEADLETTER_STREAM))

    return app
