"""Bus edges of the memory service."""

from faststream import AckPolicy
from faststream.nats import JStream, NatsMessage, NatsRouter, PullSub
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from contracts import subjects
from contracts.base import Ping, Pong
from contracts.sessions import SessionArchived
from services.memory.config import Settings
from services.memory.service import MemoryService
from services.runtime.deadletter import DeadLetterPublisher


def build_router(
    settings: Settings, service: MemoryService, deadletters: DeadLetterPublisher
) -> NatsRouter:
    """Wire the memory service's subjects to its handlers."""
    router = NatsRouter()

    @router.subscriber(subjects.MEMORY_PING, queue=subjects.MEMORY_QUEUE)
    async def ping(_: Ping) -> Pong:
        return Pong(service="memory", instance=settings.instance)

    @router.subscriber(
        subjects.SESSION_ARCHIVED,
        stream=JStream(subjects.SESSION_EVENTS_STREAM.name, declare=False),
        durable=subjects.MEMORY_ARCHIVED_DURABLE,
        pull_sub=PullSub(batch_size=10, timeout=5.0),
        config=ConsumerConfig(ack_wait=60, max_deliver=5),
        # A failure is retried rather than terminated (FastStream's default drops it).
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def session_archived(msg: NatsMessage) -> None:
        try:
            event = SessionArchived.model_validate_json(msg.body)
        except ValidationError as exc:
            await deadletters.publish(msg, f"not a SessionArchived: {exc}")
            return
        await service.on_session_archived(event)

    return router
