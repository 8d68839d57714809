"""Bus edges of the history service: validate, call one service method, reply."""

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from faststream.nats import NatsMessage, NatsRouter
from pydantic import ValidationError

from contracts import subjects
from contracts.base import Contract, Ping, Pong, Reply
from contracts.history import (
    AppendMessage,
    ArchiveSession,
    CreateSession,
    DeleteReply,
    DeleteSession,
    GetSession,
    ListFeed,
    ListMessages,
    ListSessions,
    MessagePage,
    MessageReply,
    SearchMessages,
    SessionPage,
    SessionReply,
)
from services.history.errors import HistoryError, internal, invalid, to_bus_error
from services.history.service import HistoryService
from services.runtime.bus import RequestMeta
from services.runtime.deadletter import DeadLetterPublisher

Req = TypeVar("Req", bound=Contract)
Rep = TypeVar("Rep", bound=Reply)
log = structlog.get_logger("chatbus.history.subscribers")


class Answerer:
    """Turn one raw request into one reply, whatever goes wrong."""

    def __init__(self, deadletters: DeadLetterPublisher) -> None:
        self.deadletters = deadletters

    async def answer(
        self,
        msg: NatsMessage,
        request_type: type[Req],
        reply_type: type[Rep],
        call: Callable[[Req, RequestMeta], Awaitable[Rep]],
    ) -> Rep:
        """Validate the body, run ``call``, and map every failure to an error reply."""
        try:
            request = request_type.model_validate_json(msg.body)
        except ValidationError as exc:
            reason = f"invalid {request_type.__name__}: {describe(exc)}"
            await self.deadletters.publish(msg, reason)
            return reply_type(error=invalid(reason))
        try:
            return await call(request, RequestMeta.from_headers(msg.headers))
        except HistoryError as exc:
            return reply_type(error=to_bus_error(exc))
        except Exception:
            log.exception("history request failed", request=request_type.__name__)
            return reply_type(error=internal())


def describe(exc: ValidationError) -> str:
    """Summarise validation errors as ``field: problem`` pairs, without echoing input."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)[:1500]


def build_router(
    service: HistoryService, deadletters: DeadLetterPublisher, *, max_workers: int = 32
) -> NatsRouter:
    """Wire the history subjects to the service, one queue group across replicas."""
    router = NatsRouter()
    edge = Answerer(deadletters)
    queue = subjects.HISTORY_QUEUE

    @router.subscriber(subjects.HISTORY_SESSION_CREATE, queue=queue, max_workers=max_workers)
    async def create_session(msg: NatsMessage) -> SessionReply:
        return await edge.answer(msg, CreateSession, SessionReply, service.create_session)

    @router.subscriber(subjects.HISTORY_SESSION_GET, queue=queue, max_workers=max_workers)
    async def get_session(msg: NatsMessage) -> SessionReply:
        return await edge.answer(msg, GetSession, SessionReply, service.get_session)

    @router.subscriber(subjects.HISTORY_SESSION_LIST, queue=queue, max_workers=max_workers)
    async def list_sessions(msg: NatsMessage) -> SessionPage:
        return await edge.answer(msg, ListSessions, SessionPage, service.list_sessions)

    @router.subscriber(subjects.HISTORY_MESSAGE_APPEND, queue=queue, max_workers=max_workers)
    async def append_message(msg: NatsMessage) -> MessageReply:
        return await edge.answer(msg, AppendMessage, MessageReply, service.append_message)

    @router.subscriber(subjects.HISTORY_MESSAGE_LIST, queue=queue, max_workers=max_workers)
    async def list_messages(msg: NatsMessage) -> MessagePage:
        return await edge.answer(msg, ListMessages, MessagePage, service.list_messages)

    @router.subscriber(subjects.HISTORY_SESSION_ARCHIVE, queue=queue, max_workers=max_workers)
    async def archive_session(msg: NatsMessage) -> SessionReply:
        return await edge.answer(msg, ArchiveSession, SessionReply, service.archive_session)

    @router.subscriber(subjects.HISTORY_SESSION_DELETE, queue=queue, max_workers=max_workers)
    async def delete_session(msg: NatsMessage) -> DeleteReply:
        return await edge.answer(msg, DeleteSession, DeleteReply, service.delete_session)

    @router.subscriber(subjects.HISTORY_FEED, queue=queue, max_workers=max_workers)
    async def list_feed(msg: NatsMessage) -> MessagePage:
        return await edge.answer(msg, ListFeed, MessagePage, service.list_feed)

    @router.subscriber(subjects.HISTORY_SEARCH, queue=queue, max_workers=max_workers)
    async def search_messages(msg: NatsMessage) -> MessagePage:
        return await edge.answer(msg, SearchMessages, MessagePage, service.search_messages)

    @router.subscriber(subjects.HISTORY_PING, queue=queue)
    async def ping(msg: NatsMessage) -> Pong:
        return await edge.answer(msg, Ping, Pong, service.ping)

    return router
