"""Bus edges of the history service: each subject, its request and reply, and who answers."""

from typing import Any

from contracts import subjects
from contracts.base import Contract, Ping, Pong, Reply
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

# Each subject served, its request and reply models, and the service method answering it.
ROUTES: tuple[tuple[str, type[Contract], type[Reply], str], ...] = (
    (subjects.HISTORY_SESSION_CREATE, CreateSession, SessionReply, "create_session"),
    (subjects.HISTORY_SESSION_GET, GetSession, SessionReply, "get_session"),
    (subjects.HISTORY_SESSION_LIST, ListSessions, SessionPage, "list_sessions"),
    (subjects.HISTORY_MESSAGE_APPEND, AppendMessage, MessageReply, "append_message"),
    (subjects.HISTORY_MESSAGE_LIST, ListMessages, MessagePage, "list_messages"),
    (subjects.HISTORY_JOB_END, EndJob, JobEnded, "end_job"),
    (subjects.HISTORY_SESSION_ARCHIVE, ArchiveSession, SessionReply, "archive_session"),
    (subjects.HISTORY_SESSION_DELETE, DeleteSession, DeleteReply, "delete_session"),
    (subjects.HISTORY_FEED, ListFeed, MessagePage, "list_feed"),
    (subjects.HISTORY_SEARCH, SearchMessages, MessagePage, "search_messages"),
    (subjects.HISTORY_PING, Ping, Pong, "ping"),
)
SUBJECTS = tuple(subject for subject, *_ in ROUTES)


def routes(service: HistoryService) -> list[Route[Any, Any]]:
    """Return the history subjects and the service method answering each."""
    return [
        Route(subject, request, reply, getattr(service, method))
        for subject, request, reply, method in ROUTES
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
