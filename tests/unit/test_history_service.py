"""Rules of the history service against a real store (SQLite here; the integration
tier runs the same tests against Postgres by overriding ``database_url``)."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from contracts import subjects
from contracts.base import Contract, utcnow
from contracts.history import (
    Admission,
    AppendMessage,
    ArchiveSession,
    CreateSession,
    DeleteSession,
    GetSession,
    ListFeed,
    ListMessages,
    ListSessions,
    MessageRecord,
    MessageReply,
    Role,
    SessionRecord,
)
from contracts.sessions import SessionArchived, SessionDeleted
from services.history.cache import Cache, CacheMetrics
from services.history.cache_backends import MemoryBackend
from services.history.errors import Conflict, InvalidInput, NotFound
from services.history.models import DATABASE, SCHEMA
from services.history.outbox import Relay
from services.history.service import HistoryService
from services.history.store import Store
from services.runtime.meta import BusUnavailable, RequestMeta
from services.runtime.sql import database

META = RequestMeta(request_id="req-1", user_id="alice")


@dataclass
class Published:
    subject: str
    body: Contract
    meta: RequestMeta
    stream: str | None
    msg_id: str | None


@dataclass
class RecordingPublisher:
    """Keep what would go on the bus; fail on demand."""

    sent: list[Published] = field(default_factory=list)
    fail: bool = False

    def on(self, *subject: str) -> list[Published]:
        """Return what was published on these subjects (default: the session events)."""
        wanted = subject or (subjects.SESSION_ARCHIVED, subjects.SESSION_DELETED)
        return [p for p in self.sent if p.subject in wanted]

    async def publish(
        self,
        subject: str,
        body: Contract,
        meta: RequestMeta,
        *,
        stream: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        if self.fail:
            raise BusUnavailable("bus down")
        self.sent.append(Published(subject, body, meta, stream, msg_id))


@pytest.fixture(name="database_url")
def database_url_fixture(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/nested/history.db"


@pytest.fixture(name="publisher")
def publisher_fixture() -> RecordingPublisher:
    return RecordingPublisher()


def store_at(database_url: str) -> Store:
    """Open the history store at a URL (a replica's own connections)."""
    return Store(database(database_url, schema=SCHEMA))


def build_service(store: Store, publisher: RecordingPublisher) -> HistoryService:
    """Wire a service with an in-process cache and a relay that runs only when drained."""
    cache = Cache(MemoryBackend(1000), CacheMetrics(CollectorRegistry()))
    return HistoryService(store, cache, Relay(store, publisher), instance="test")


@pytest.fixture(name="service")
async def service_fixture(database_url: str, publisher: RecordingPublisher) -> AsyncIterator[Any]:
    await DATABASE.migrate(database_url)
    store = store_at(database_url)
    service = build_service(store, publisher)
    try:
        yield service
        assert isinstance(service.outbox, Relay)
        await service.outbox.settle()
    finally:
        await store.sql.close()


@pytest.fixture(name="relay")
def relay_fixture(service: HistoryService) -> Relay:
    assert isinstance(service.outbox, Relay)
    return service.outbox


async def _create(
    service: HistoryService, user: str = "alice", persona: str = "p1", title: str | None = None
) -> SessionRecord:
    reply = await service.create_session(
        CreateSession(user_id=user, persona=persona, title=title), META
    )
    assert reply.error is None and reply.session is not None
    return reply.session


def admission(**limits: Any) -> Admission:
    """Return the admission a gateway sends with a user message (no limits by default)."""
    return Admission(revision=1, created_at=utcnow(), **limits)


async def _append(
    service: HistoryService,
    session: SessionRecord,
    role: Role = "user",
    job: uuid.UUID | None = None,
    content: str = "hi",
    user: str | None = None,
) -> tuple[MessageRecord, bool]:
    reply = await _reply(service, session, role, job, content, user)
    assert reply.error is None and reply.message is not None
    return reply.message, reply.created


async def _reply(
    service: HistoryService,
    session: SessionRecord,
    role: Role = "user",
    job: uuid.UUID | None = None,
    content: str = "hi",
    user: str | None = None,
    admit: Admission | None = None,
) -> MessageReply:
    """Append a message (a user one with ``admit``, or an admission without limits)."""
    return await service.append_message(
        AppendMessage(
            user_id=user or session.user_id,
            session_id=session.id,
            job_id=job or uuid.uuid4(),
            role=role,
            content=content,
            admission=(admit or admission()) if role == "user" else None,
        ),
        META,
    )


async def _get(service: HistoryService, session: SessionRecord) -> SessionRecord:
    reply = await service.get_session(
        GetSession(user_id=session.user_id, session_id=session.id), META
    )
    assert reply.session is not None
    return reply.session


async def test_create_archives_previous_session_of_same_persona(
    service: HistoryService, publisher: RecordingPublisher, relay: Relay
) -> None:
    first = await _create(service, title="first")
    other_persona = await _create(service, persona="p2")
    other_user = await _create(service, user="bob")
    assert await relay.drain() == 0 and publisher.sent == []

    second = await _create(service)
    assert await relay.drain() == 1

    old = await _get(service, first)
    assert old.status == "archived" and old.archived_at is not None
    assert old.archived_at.tzinfo is not None and old.archived_at.utcoffset() == timedelta(0)
    assert (await _get(service, second)).status == "active"
    assert (await _get(service, other_persona)).status == "active"
    assert (await _get(service, other_user)).status == "active"
    assert len(publisher.sent) == 1
    sent = publisher.sent[0]
    assert sent.subject == subjects.SESSION_ARCHIVED
    assert sent.stream == subjects.SESSION_EVENTS_STREAM.name
    assert sent.msg_id == f"{first.id}.archived"
    assert sent.meta == META
    assert sent.body == SessionArchived(
        session_id=first.id, user_id="alice", persona="p1", archived_at=old.archived_at
    )


async def test_create_succeeds_when_the_event_cannot_be_published(
    service: HistoryService, publisher: RecordingPublisher, relay: Relay
) -> None:
    first = await _create(service)
    publisher.fail = True
    second = await _create(service)
    assert await relay.drain() == 0
    assert (await _get(service, first)).status == "archived"
    assert (await _get(service, second)).status == "active"

    publisher.fail = False
    assert await relay.drain() == 1
    assert [p.msg_id for p in publisher.sent] == [f"{first.id}.archived"]
    assert await relay.drain() == 0


async def test_concurrent_creates_leave_exactly_one_active_session(
    service: HistoryService, publisher: RecordingPublisher, relay: Relay
) -> None:
    created = await asyncio.gather(*(_create(service) for _ in range(5)))
    await relay.drain()
    page = await service.list_sessions(ListSessions(user_id="alice", persona="p1"), META)
    assert {s.id for s in page.items} == {s.id for s in created}
    assert [s.status for s in page.items].count("active") == 1
    archived = {s.id for s in page.items if s.status == "archived"}
    assert {p.body.session_id for p in publisher.sent} == archived  # type: ignore[attr-defined]
    assert len(publisher.sent) == 4


async def test_sessions_are_invisible_to_other_users(service: HistoryService) -> None:
    session = await _create(service)
    for request in (
        GetSession(user_id="mallory", session_id=session.id),
        GetSession(user_id="alice", session_id=uuid.uuid4()),
    ):
        with pytest.raises(NotFound) as missing:
            await service.get_session(request, META)
        assert str(missing.value) == "no such session"
    with pytest.raises(NotFound):
        await _append(service, session, user="mallory")
    with pytest.raises(NotFound):
        await service.list_messages(ListMessages(user_id="mallory", session_id=session.id), META)
    page = await service.list_sessions(ListSessions(user_id="mallory"), META)
    assert page.items == ()


async def test_append_is_idempotent_on_job_and_role(service: HistoryService) -> None:
    session = await _create(service)
    job = uuid.uuid4()
    first, created = await _append(service, session, job=job, content="hello")
    again, created_again = await _append(service, session, job=job, content="changed")
    reply, _ = await _append(service, session, role="assistant", job=job, content="answer")

    assert created and not created_again
    assert again == first and again.content == "hello"
    assert reply.id != first.id
    stored = await _get(service, session)
    assert stored.message_count == 2
    assert stored.updated_at >= reply.created_at > session.updated_at


async def test_concurrent_duplicate_appends_store_one_message(service: HistoryService) -> None:
    session = await _create(service)
    job = uuid.uuid4()
    results = await asyncio.gather(*(_append(service, session, job=job) for _ in range(10)))
    assert sum(created for _, created in results) == 1
    assert len({message.id for message, _ in results}) == 1
    assert (await _get(service, session)).message_count == 1
    page = await service.list_messages(ListMessages(user_id="alice", session_id=session.id), META)
    assert len(page.items) == 1


async def test_concurrent_appends_share_transactions_and_keep_their_own_answers(
    service: HistoryService,
) -> None:
    sessions = [await _create(service, persona=f"p{i}") for i in range(5)]
    archived = await _create(service, persona="gone")
    await _create(service, persona="gone")  # archives it
    missing = archived.model_copy(update={"id": uuid.uuid4()})
    repeated = uuid.uuid4()

    async def attempt(call: Awaitable[tuple[MessageRecord, bool]]) -> object:
        try:
            return await call
        except (Conflict, NotFound) as exc:
            return type(exc)

    calls = [_append(service, sessions[i % 5], content=f"m{i}") for i in range(40)]
    calls += [_append(service, sessions[0], job=repeated) for _ in range(5)]
    calls += [_append(service, archived), _append(service, missing)]
    calls += [_append(service, sessions[1], user="mallory")]  # not hers: as if missing
    batches_before = service.appends.batches
    outcomes = await asyncio.gather(*(attempt(c) for c in calls))

    stored = [o for o in outcomes[:40] if isinstance(o, tuple)]
    assert len(stored) == 40 and all(created for _, created in stored)
    repeats = outcomes[40:45]
    assert sum(created for _, created in repeats) == 1  # type: ignore[misc]
    assert len({m.id for m, _ in repeats}) == 1  # type: ignore[misc]
    assert outcomes[45:] == [Conflict, NotFound, NotFound]
    # 48 appends arrived together: they were written in far fewer transactions.
    assert service.appends.batches - batches_before < 10
    counts = [(await _get(service, s)).message_count for s in sessions]
    assert counts == [8 + 1, 8, 8, 8, 8]


async def test_two_replicas_appending_one_job_store_it_once(
    service: HistoryService, database_url: str
) -> None:
    other_store = store_at(database_url)  # a second replica: its own pool and batches
    other = build_service(other_store, RecordingPublisher())
    try:
        session = await _create(service)
        job = uuid.uuid4()
        replicas = [service, other] * 10
        results = await asyncio.gather(*(_append(r, session, job=job) for r in replicas))
    finally:
        await other_store.sql.close()
    assert sum(created for _, created in results) == 1
    assert len({message.id for message, _ in results}) == 1
    assert (await _get(service, session)).message_count == 1


async def test_archived_session_refuses_user_but_keeps_assistant_messages(
    service: HistoryService,
) -> None:
    old = await _create(service)
    job = uuid.uuid4()
    await _append(service, old, job=job)
    await _create(service)  # archives ``old``

    with pytest.raises(Conflict):
        await _append(service, old, role="user")
    reply, created = await _append(service, old, role="assistant", job=job)
    assert created and reply.role == "assistant"
    # A redelivered user message of a job that already stored it is still answered.
    _, created_again = await _append(service, old, role="user", job=job)
    assert not created_again
    assert (await _get(service, old)).message_count == 2


async def test_message_pages_stay_stable_while_messages_arrive(service: HistoryService) -> None:
    session = await _create(service)
    originals = [(await _append(service, session, content=f"m{i}"))[0] for i in range(7)]
    expected = [m.id for m in reversed(originals)]

    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = await service.list_messages(
            ListMessages(user_id="alice", session_id=session.id, limit=3, cursor=cursor), META
        )
        assert page.error is None
        seen += [m.id for m in page.items]
        await _append(service, session, content="arrived between pages")
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected
    times = [m.created_at for m in originals]
    assert all(t.tzinfo is UTC or t.utcoffset() == timedelta(0) for t in times)


async def test_session_pages_stay_stable_and_filter(service: HistoryService) -> None:
    made = [await _create(service, persona=f"p{i % 3}") for i in range(8)]
    active = {s.id for s in made[-3:]}

    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = await service.list_sessions(
            ListSessions(user_id="alice", limit=3, cursor=cursor), META
        )
        seen += [s.id for s in page.items]
        await _create(service, persona="late")
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [s.id for s in reversed(made)]

    page = await service.list_sessions(ListSessions(user_id="alice", status="active"), META)
    assert active <= {s.id for s in page.items}
    assert all(s.status == "active" for s in page.items)
    page = await service.list_sessions(
        ListSessions(user_id="alice", persona="p1", status="archived"), META
    )
    assert [s.id for s in page.items] == [made[4].id, made[1].id]


async def test_malformed_cursor_is_invalid(service: HistoryService) -> None:
    session = await _create(service)
    with pytest.raises(InvalidInput):
        await service.list_sessions(ListSessions(user_id="alice", cursor="garbage"), META)
    first = await service.list_sessions(ListSessions(user_id="alice", limit=1), META)
    await _create(service)
    page = await service.list_sessions(ListSessions(user_id="alice", limit=1), META)
    assert page.next_cursor is not None
    with pytest.raises(InvalidInput):
        # A session cursor is not a message cursor.
        await service.list_messages(
            ListMessages(user_id="alice", session_id=session.id, cursor=page.next_cursor), META
        )
    assert first.next_cursor is None


async def test_timestamps_come_back_aware_utc(service: HistoryService) -> None:
    session = await _create(service)
    stored = await _get(service, session)
    assert stored == session
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.astimezone(UTC) == session.created_at


async def test_archive_is_announced_once_and_repeats_are_no_ops(
    service: HistoryService, publisher: RecordingPublisher, relay: Relay
) -> None:
    session = await _create(service)
    request = ArchiveSession(user_id="alice", session_id=session.id)
    reply = await service.archive_session(request, META)
    assert reply.session is not None and reply.session.status == "archived"
    archived_at = reply.session.archived_at
    assert archived_at is not None and archived_at >= session.created_at

    again = await service.archive_session(request, META)
    assert again.session == reply.session
    assert await _get(service, session) == reply.session
    assert await relay.drain() == 1
    [sent] = publisher.sent
    assert sent.subject == subjects.SESSION_ARCHIVED and sent.msg_id == f"{session.id}.archived"
    assert sent.meta == META
    assert sent.body == SessionArchived(
        session_id=session.id, user_id="alice", persona="p1", archived_at=archived_at
    )
    with pytest.raises(NotFound):
        await service.archive_session(ArchiveSession(user_id="bob", session_id=session.id), META)
    with pytest.raises(Conflict):
        await _append(service, session)


async def test_delete_removes_messages_and_announces_it(
    service: HistoryService, publisher: RecordingPublisher, relay: Relay
) -> None:
    session = await _create(service)
    keep = await _create(service, persona="other")
    gone = [(await _append(service, session, content=f"gone {i}"))[0] for i in range(3)]
    kept, _ = await _append(service, keep, content="kept")

    with pytest.raises(NotFound):
        await service.delete_session(DeleteSession(user_id="bob", session_id=session.id), META)
    reply = await service.delete_session(
        DeleteSession(user_id="alice", session_id=session.id), META
    )
    assert reply.deleted and reply.error is None

    with pytest.raises(NotFound):
        await _get(service, session)
    with pytest.raises(NotFound):
        await service.list_messages(ListMessages(user_id="alice", session_id=session.id), META)
    feed = await service.list_feed(ListFeed(user_id="alice"), META)
    assert feed.items == (kept,)
    with pytest.raises(NotFound):
        await service.delete_session(DeleteSession(user_id="alice", session_id=session.id), META)

    assert await relay.drain() == 1
    [sent] = publisher.on()
    assert sent.subject == subjects.SESSION_DELETED and sent.msg_id == f"{session.id}.deleted"
    # Nobody answered its three messages: their jobs are named, for the caller to cancel.
    assert set(reply.unfinished) == {m.job_id for m in gone}
    assert isinstance(sent.body, SessionDeleted)
    assert sent.body.session_id == session.id and sent.body.user_id == "alice"


async def test_feed_pages_across_sessions_stay_stable_while_messages_arrive(
    service: HistoryService,
) -> None:
    sessions = [await _create(service, persona=f"p{i}") for i in range(3)]
    other = await _create(service, user="bob")
    await _append(service, other, content="not alice's")
    originals = [
        (await _append(service, sessions[i % 3], content=f"m{i}"))[0] for i in range(8)
    ]
    expected = [m.id for m in reversed(originals)]

    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = await service.list_feed(ListFeed(user_id="alice", limit=3, cursor=cursor), META)
        seen += [m.id for m in page.items]
        await _append(service, sessions[0], content="arrived between pages")
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected
    assert len(set(seen)) == len(seen)


async def test_feed_refuses_a_bad_or_foreign_cursor(service: HistoryService) -> None:
    session = await _create(service)
    for i in range(2):
        await _append(service, session, content=f"m{i}")
    with pytest.raises(InvalidInput):
        await service.list_feed(ListFeed(user_id="alice", cursor="garbage"), META)
    page = await service.list_messages(
        ListMessages(user_id="alice", session_id=session.id, limit=1), META
    )
    assert page.next_cursor is not None
    with pytest.raises(InvalidInput):
        await service.list_feed(ListFeed(user_id="alice", cursor=page.next_cursor), META)
