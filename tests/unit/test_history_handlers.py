"""History handlers through the request edge, as the responder calls it: replies and bad input."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from contracts import subjects
from contracts.base import Ping, Pong, Reply
from contracts.deadletter import DeadLetter
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
    SessionPage,
    SessionReply,
)
from services.history.cache import Cache, CacheMetrics
from services.history.cache_backends import MemoryBackend
from services.history.models import DATABASE
from services.history.outbox import Relay
from services.history.service import HistoryService
from services.history.subscribers import ROUTES, SUBJECTS, answerer, routes
from services.runtime.meta import RequestMeta
from tests.answering import Edge, dead_letters
from tests.unit.test_history_service import RecordingPublisher, admission, store_at


class ExplodingService(HistoryService):
    """A service whose session lookup hits a bug."""

    async def get_session(self, req: GetSession, meta: RequestMeta) -> SessionReply:
        raise RuntimeError("password=hunter2 in a stack trace")


@dataclass
class Harness:
    edge: Edge
    dead: list[DeadLetter]

    async def ask(self, *args: Any) -> Any:
        return await self.edge.ask(*args)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    url = f"sqlite+aiosqlite:///{tmp_path}/history.db"
    await DATABASE.migrate(url)
    store = store_at(url)
    cache = Cache(MemoryBackend(100), CacheMetrics(CollectorRegistry()))
    relay = Relay(store, RecordingPublisher())
    service = ExplodingService(store, cache, relay, instance="unit-1")
    letters, dead = dead_letters("history")
    try:
        yield Harness(Edge.of(answerer(letters), routes(service)), dead)
        await relay.settle()
    finally:
        await store.sql.close()


async def test_every_subject_answers_with_its_reply_model(harness: Harness) -> None:
    pong = await harness.ask(subjects.HISTORY_PING, Ping(), Pong)
    assert pong == Pong(service="history", instance="unit-1")

    created = await harness.ask(
        subjects.HISTORY_SESSION_CREATE, CreateSession(user_id="u", persona="p"), SessionReply
    )
    assert created.error is None and created.session.persona == "p"
    session_id = created.session.id

    page = await harness.ask(subjects.HISTORY_SESSION_LIST, ListSessions(user_id="u"), SessionPage)
    assert [s.id for s in page.items] == [session_id] and page.next_cursor is None

    job = uuid.uuid4()
    append = AppendMessage(
        user_id="u", session_id=session_id, job_id=job, role="user", content="hello",
        admission=admission(),
    )
    stored = await harness.ask(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply)
    assert stored.created and stored.message.content == "hello"
    again = await harness.ask(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply)
    assert not again.created and again.message == stored.message

    messages = await harness.ask(
        subjects.HISTORY_MESSAGE_LIST,
        ListMessages(user_id="u", session_id=session_id),
        MessagePage,
    )
    assert messages.items == (stored.message,)

    ended = await harness.ask(subjects.HISTORY_JOB_END, EndJob(user_id="u", job_id=job), JobEnded)
    assert ended.error is None and ended.known
    unknown = EndJob(user_id="u", job_id=uuid.uuid4())
    assert not (await harness.ask(subjects.HISTORY_JOB_END, unknown, JobEnded)).known
    unadmitted = append.model_copy(update={"admission": None, "job_id": uuid.uuid4()})
    refused = await harness.ask(subjects.HISTORY_MESSAGE_APPEND, unadmitted, MessageReply)
    assert refused.error.code == "invalid" and "admission" in refused.error.message
    assert harness.dead == []


async def test_domain_errors_become_error_replies(harness: Harness) -> None:
    missing = await harness.ask(
        subjects.HISTORY_MESSAGE_LIST,
        ListMessages(user_id="u", session_id=uuid.uuid4()),
        MessagePage,
    )
    assert missing.error.code == "not_found" and missing.items == ()

    bad_cursor = await harness.ask(
        subjects.HISTORY_SESSION_LIST, ListSessions(user_id="u", cursor="nope"), SessionPage
    )
    assert bad_cursor.error.code == "invalid"
    assert harness.dead == []  # a valid request with a bad value is not a dead letter


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b'{"user_id": "u", "persona": "p", "admin": true}', "admin"),
        (b'{"user_id": 42, "persona": "p"}', "user_id"),
        (b'{"user_id": "u", "persona": "no spaces allowed"}', "persona"),
    ],
)
async def test_malformed_request_is_answered_invalid_and_dead_lettered(
    harness: Harness, body: bytes, field: str
) -> None:
    reply = await harness.ask(subjects.HISTORY_SESSION_CREATE, body, SessionReply)
    assert reply.session is None
    assert reply.error.code == "invalid"
    assert field in reply.error.message and "CreateSession" in reply.error.message

    assert len(harness.dead) == 1
    letter = harness.dead[0]
    assert letter.service == "history"
    assert letter.subject == subjects.HISTORY_SESSION_CREATE
    assert letter.payload == body.decode()
    # The service still answers afterwards.
    pong = await harness.ask(subjects.HISTORY_PING, Ping(), Pong)
    assert pong.error is None


async def test_unexpected_failure_is_internal_without_details(harness: Harness) -> None:
    reply = await harness.ask(
        subjects.HISTORY_SESSION_GET,
        GetSession(user_id="u", session_id=uuid.uuid4()),
        SessionReply,
    )
    assert reply.error.code == "internal"
    assert "hunter2" not in reply.error.message and "RuntimeError" not in reply.error.message


async def test_archive_delete_and_feed_answer_with_their_reply_models(harness: Harness) -> None:
    created = await harness.ask(
        subjects.HISTORY_SESSION_CREATE, CreateSession(user_id="u", persona="p"), SessionReply
    )
    session_id = created.session.id
    append = AppendMessage(
        user_id="u", session_id=session_id, job_id=uuid.uuid4(), role="user", content="hi",
        admission=admission(),
    )
    stored = await harness.ask(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply)

    feed = await harness.ask(subjects.HISTORY_FEED, ListFeed(user_id="u"), MessagePage)
    assert feed.error is None and feed.items == (stored.message,)
    bad = await harness.ask(subjects.HISTORY_FEED, ListFeed(user_id="u", cursor="x"), MessagePage)
    assert bad.error.code == "invalid"

    foreign = ArchiveSession(user_id="other", session_id=session_id)
    refused = await harness.ask(subjects.HISTORY_SESSION_ARCHIVE, foreign, SessionReply)
    assert refused.error.code == "not_found" and refused.session is None
    archive = ArchiveSession(user_id="u", session_id=session_id)
    archived = await harness.ask(subjects.HISTORY_SESSION_ARCHIVE, archive, SessionReply)
    assert archived.error is None and archived.session.status == "archived"
    again = await harness.ask(subjects.HISTORY_SESSION_ARCHIVE, archive, SessionReply)
    assert again.session == archived.session

    delete = DeleteSession(user_id="other", session_id=session_id)
    missing = await harness.ask(subjects.HISTORY_SESSION_DELETE, delete, DeleteReply)
    assert missing.error.code == "not_found" and not missing.deleted
    delete = DeleteSession(user_id="u", session_id=session_id)
    deleted = await harness.ask(subjects.HISTORY_SESSION_DELETE, delete, DeleteReply)
    assert deleted.error is None and deleted.deleted
    gone = await harness.ask(subjects.HISTORY_FEED, ListFeed(user_id="u"), MessagePage)
    assert gone.items == ()
    assert harness.dead == []


@pytest.mark.parametrize(
    ("subject", "reply", "body", "name"),
    [
        (subjects.HISTORY_SESSION_ARCHIVE, SessionReply, b'{"user_id": "u"}', "ArchiveSession"),
        (subjects.HISTORY_SESSION_DELETE, DeleteReply, b'{"session_id": 1}', "DeleteSession"),
        (subjects.HISTORY_FEED, MessagePage, b'{"user_id": "u", "limit": 0}', "ListFeed"),
    ],
)
async def test_malformed_new_requests_are_invalid_and_dead_lettered(
    harness: Harness, subject: str, reply: type[Reply], body: bytes, name: str
) -> None:
    answer = await harness.ask(subject, body, reply)
    assert answer.error.code == "invalid" and name in answer.error.message
    assert [letter.subject for letter in harness.dead] == [subject]


def test_the_served_subjects_are_listed_once_each_with_their_method() -> None:
    assert len(SUBJECTS) == len(set(SUBJECTS)) == len(ROUTES)
    assert subjects.HISTORY_JOB_END in SUBJECTS
    for _, request, reply, method in ROUTES:
        assert callable(getattr(HistoryService, method)), method
        assert issubclass(reply, Reply) and request.__name__
