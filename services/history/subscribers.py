"""Bus edges of the history service: validate, call one service method, reply."""


import structlog
from faststream.nats import NatsMessage, NatsRouter

from contracts import subjects
from contracts.base import Ping, Pong
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
from services.history.errors import HistoryError, to_bus_error
from services.history.service import HistoryService
from services.runtime.answer import RequestAnswerer
from services.runtime.deadletter import DeadLetterPublisher

log = structlog.get_logger("chatbus.history.subscribers")


def build_router(
    service: HistoryService, deadletters: DeadLetterPublisher, *, max_workers: int = 32
) -> NatsRouter:
    """Wire the history subjects to the service, one queue group across replicas."""
    router = NatsRouter()
    edge = RequestAnswerer("history", deadletters, HistoryError, to_bus_error)
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
