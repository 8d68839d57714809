"""Bus edges of the memory service: requests answered with replies, events settled by hand."""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsMessage, NatsRouter, PullSub
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from contracts import subjects
from contracts.base import Contract, Ping, Pong, Reply
from contracts.memory import DeleteMemory, MemoryDeleted, MemoryPage, RecallMemories
from contracts.sessions import SessionArchived, SessionDeleted
from services.memory.config import Settings
from services.memory.errors import MemoryServiceError, reason_for, to_bus_error, verdict_for
from services.memory.service import MemoryService
from services.runtime.answer import Answerer, DeadLetters, Route, describe
from services.runtime.meta import RequestMeta
from services.runtime.responder import Observer, Responder
from services.runtime.settle import ACK, give_up, settle

E = TypeVar("E", bound=Contract)
log = structlog.get_logger("chatbus.memory.subscribers")
# Deliveries that ended without a verdict (crashed replicas) are retried up to this many
# times the attempts, so a message that kills its consumer cannot loop for ever.
CRASH_SLACK = 2


def consumer_config(settings: Settings, durable: str, subject: str) -> ConsumerConfig:
    """Describe a durable pull consumer of session events.

    Deliveries are not capped by the server: attempts are counted here by the
    delivery count and end in a dead letter, which the server would not write.
    """
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=settings.memory_ack_wait,
        max_deliver=-1,
    )


class Edge:
    """Turn delivered events into service calls and every outcome into a settlement."""

    def __init__(self, settings: Settings, deadletters: DeadLetters) -> None:
        self.settings = settings
        self.deadletters = deadletters

    async def consume(
        self,
        msg: NatsMessage,
        event_type: type[E],
        call: Callable[[E, RequestMeta], Awaitable[object]],
    ) -> None:
        """Validate an event, run ``call``, then ack, retry or dead-letter it."""
        raw = msg.raw_message
        try:
            event = event_type.model_validate_json(msg.body)
        except ValidationError as exc:
            reason = f"not a {event_type.__name__}: {describe(exc)}"
            await settle(raw, give_up(reason), self.deadletters)
            return
        deliveries = int(raw.metadata.num_delivered or 1)
        max_attempts = self.settings.memory_max_attempts
        if deliveries > CRASH_SLACK * max_attempts:
            reason = f"delivered {deliveries} times without finishing"
            await settle(raw, give_up(reason), self.deadletters)
            return
        try:
            await call(event, RequestMeta.from_headers(msg.headers))
        except Exception as exc:
            verdict = verdict_for(
                exc,
                deliveries=deliveries,
                max_attempts=max_attempts,
                retry_delay=self.settings.memory_retry_delay,
            )
            fields = {
                "kind": event_type.__name__,
                "deliveries": deliveries,
                "settle": verdict.settle.value,
            }
            if isinstance(exc, MemoryServiceError):
                log.warning("attempt failed", reason=reason_for(exc), **fields)
            else:
                log.exception("attempt failed unexpectedly", **fields)
            await settle(raw, verdict, self.deadletters)
            return
        await settle(raw, ACK, self.deadletters)


# Each request-reply subject, its request and reply models, and the method answering it.
ROUTES: tuple[tuple[str, type[Contract], type[Reply], str], ...] = (
    (subjects.MEMORY_RECALL, RecallMemories, MemoryPage, "recall"),
    (subjects.MEMORY_DELETE, DeleteMemory, MemoryDeleted, "delete_memory"),
    (subjects.MEMORY_PING, Ping, Pong, "ping"),
)
SUBJECTS = tuple(subject for subject, *_ in ROUTES)


def routes(service: MemoryService) -> list[Route[Any, Any]]:
    """Return the request-reply subjects of the memory service and who answers each."""
    return [
        Route(subject, request, reply, getattr(service, method))
        for subject, request, reply, method in ROUTES
    ]


def build_responder(
    settings: Settings,
    service: MemoryService,
    deadletters: DeadLetters,
    observer: Observer | None = None,
) -> Responder:
    """Answer recall, delete and ping on the memory queue group."""
    answerer = Answerer("memory", deadletters, MemoryServiceError, to_bus_error)
    return Responder(
        answerer,
        routes(service),
        queue=subjects.MEMORY_QUEUE,
        concurrency=settings.request_concurrency,
        observer=observer,
    )


def build_router(
    settings: Settings, service: MemoryService, deadletters: DeadLetters
) -> NatsRouter:
    """Wire the two durable consumers of session events to the service."""
    router = NatsRouter()
    edge = Edge(settings, deadletters)
    stream = JStream(subjects.SESSION_EVENTS_STREAM.name, declare=False)
    # One pull brings a batch that runs together; the next pull waits for the whole batch,
    # so no fetched message waits unheartbeated behind a busy worker.
    pull = PullSub(batch_size=settings.memory_concurrency, timeout=settings.memory_fetch_timeout)

    @router.subscriber(
        subjects.SESSION_ARCHIVED,
        stream=stream,
        durable=subjects.MEMORY_ARCHIVED_DURABLE,
        config=consumer_config(
            settings, subjects.MEMORY_ARCHIVED_DURABLE, subjects.SESSION_ARCHIVED
        ),
        pull_sub=pull,
        ack_policy=AckPolicy.MANUAL,
    )
    async def session_archived(msg: NatsMessage) -> None:
        async def generate(event: SessionArchived, meta: RequestMeta) -> object:
            return await service.generate(event, meta, heartbeat=msg.in_progress)

        await edge.consume(msg, SessionArchived, generate)

    @router.subscriber(
        subjects.SESSION_DELETED,
        stream=stream,
        durable=subjects.MEMORY_DELETED_DURABLE,
        config=consumer_config(settings, subjects.MEMORY_DELETED_DURABLE, subjects.SESSION_DELETED),
        pull_sub=PullSub(batch_size=1, timeout=settings.memory_fetch_timeout),
        ack_policy=AckPolicy.MANUAL,
    )
    async def session_deleted(msg: NatsMessage) -> None:
        await edge.consume(msg, SessionDeleted, service.forget_session)

    return router
