"""Bus edges of the history service: each subject, its request and reply, and who answers."""

from typing import Any

from contracts import subjects
from contracts.base import Ping, Pong
from contracts.history import (
    AppendMessage,
    ArchiveSession,
    CreateSession,
    DeleteReply,
    DeleteSession,
    EndJob,
    GetSession,
    JobEnded,
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
from services.runtime.answer import Answerer, DeadLetters, Route
from services.runtime.responder import Observer, Responder


def routes(service: HistoryService) -> list[Route[Any, Any]]:
    """Return the history subjects and the service method answering each."""
    return [
        Route(subjects.HISTORY_SESSION_CREATE, CreateSession, SessionReply, service.create_session),
        Route(subjects.HISTORY_SESSION_GET, GetSession, SessionReply, service.get_session),
        Route(subjects.HISTORY_SESSION_LIST, ListSessions, SessionPage, service.list_sessions),
        Route(subjects.HISTORY_MESSAGE_APPEND, AppendMessage, MessageReply, service.append_message),
        Route(subjects.HISTORY_MESSAGE_LIST, ListMessages, MessagePage, service.list_messages),
        Route(subjects.HISTORY_JOB_END, EndJob, JobEnded, service.end_job),
        Route(
            subjects.HISTORY_SESSION_ARCHIVE, ArchiveSession, SessionReply, service.archive_session
        ),
        Route(subjects.HISTORY_SESSION_DELETE, DeleteSession, DeleteReply, service.delete_session),
        Route(subjects.HISTORY_FEED, ListFeed, MessagePage, service.list_feed),
        Route(subjects.HISTORY_SEARCH, SearchMessages, MessagePage, service.search_messages),
        Route(subjects.HISTORY_PING, Ping, Pong, service.ping),
    ]


def answerer(deadletters: DeadLetters) -> Answerer:
    """Return the history edge: malformed requests dead-lettered, domain errors mapped."""
    return Answerer("history", deadletters, HistoryError, to_bus_error)


def build_responder(
    service: HistoryService,
    deadletters: DeadLetters,
    *,
    concurrency: int = 32,
    observer: Observer | None = None,
) -> Responder:
    """Answer every history subject on the history queue group, across replicas."""
    return Responder(
        answerer(deadletters),
        routes(service),
        queue=subjects.HISTORY_QUEUE,
        concurrency=concurrency,
        observer=observer,
    )
