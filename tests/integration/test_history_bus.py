"""The history service over a real NATS server, started as it runs in production."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker
from nats.js.api import RawStreamMsg

from contracts import subjects
from contracts.base import Ping, Pong
from contracts.chat import RequestChat
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
from contracts.sessions import SessionArchived, SessionDeleted
from services.history.app import create_app
from services.history.config import Settings
from services.history.models import DATABASE
from services.history.outbox import Relay
from services.launcher.natsserver import NatsServer
from services.runtime.bus import BusClient, ensure_streams, make_broker
from services.runtime.meta import RequestMeta
from tests.streams import eventually, stream_messages_at
from tests.unit.test_history_service import (
    META,
    RecordingPublisher,
    admission,
    build_service,
    store_at,
)

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


@dataclass
class Running:
    bus: BusClient
    client: NatsBroker
    nats_url: str


@pytest.fixture
async def running(clean_nats: str, tmp_path: Path) -> AsyncIterator[Running]:
    settings = Settings(
        nats_url=clean_nats,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/db/history.db",
        instance="it-1",
    )
    app = create_app(settings)
    client = NatsBroker(clean_nats)
    async with app:
        await client.connect()
        try:
            yield Running(BusClient(client, TIMEOUT), client, clean_nats)
        finally:
            await client.stop()


async def _wait_for_events(nats_url: str, subject: str, count: int) -> list[RawStreamMsg]:
    """Poll the session-events stream until it holds ``count`` messages on the subject."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = await stream_messages_at(nats_url, subjects.SESSION_EVENTS_STREAM.name, subject)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_every_subject_round_trips(running: Running) -> None:
    meta = RequestMeta(user_id="u1")
    bus = running.bus
    pong = await bus.request(subjects.HISTORY_PING, Ping(), Pong, meta)
    assert pong == Pong(service="history", instance="it-1")

    created = await bus.request(
        subjects.HISTORY_SESSION_CREATE,
        CreateSession(user_id="u1", persona="p", title="t"),
        SessionReply,
        meta,
    )
    assert created.session is not None and created.session.title == "t"
    sid = created.session.id

    got = await bus.request(
        subjects.HISTORY_SESSION_GET, GetSession(user_id="u1", session_id=sid), SessionReply, meta
    )
    assert got.session == created.session
    foreign = await bus.request(
        subjects.HISTORY_SESSION_GET, GetSession(user_id="u2", session_id=sid), SessionReply, meta
    )
    assert foreign.error is not None and foreign.error.code == "not_found"

    listed = await bus.request(
        subjects.HISTORY_SESSION_LIST, ListSessions(user_id="u1"), SessionPage, meta
    )
    assert [s.id for s in listed.items] == [sid]

    append = AppendMessage(
        user_id="u1", session_id=sid, job_id=uuid.uuid4(), role="user", content="hello",
        admission=admission(),
    )
    stored = await bus.request(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply, meta)
    assert stored.created and stored.message is not None
    again = await bus.request(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply, meta)
    assert not again.created and again.message == stored.message

    page = await bus.request(
        subjects.HISTORY_MESSAGE_LIST,
        ListMessages(user_id="u1", session_id=sid),
        MessagePage,
        meta,
    )
    assert page.items == (stored.message,) and page.next_cursor is None


async def test_malformed_request_is_answered_and_dead_lettered(running: Running) -> None:
    answer = await running.client.request(
        b'{"user_id": "u1", "session_id": "not-a-uuid"}',
        subjects.HISTORY_SESSION_GET,
        headers={subjects.HEADER_REQUEST_ID: "bad-req-1"},
        timeout=TIMEOUT,
    )
    reply = SessionReply.model_validate_json(answer.body)
    assert reply.error is not None and reply.error.code == "invalid"
    assert "session_id" in reply.error.message

    letters = await stream_messages_at(
        running.nats_url, subjects.DEADLETTER_STREAM.name, subjects.deadletter("history")
    )
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0].data or b"")
    assert letter.subject == subjects.HISTORY_SESSION_GET
    assert "not-a-uuid" in letter.payload
    assert letter.headers[subjects.HEADER_REQUEST_ID] == "bad-req-1"

    pong = await running.bus.request(subjects.HISTORY_PING, Ping(), Pong, RequestMeta())
    assert pong.error is None


async def test_second_session_of_a_persona_announces_one_archive(running: Running) -> None:
    meta = RequestMeta(request_id="req-archive", user_id="u1")
    request = CreateSession(user_id="u1", persona="friend")
    first = await running.bus.request(subjects.HISTORY_SESSION_CREATE, request, SessionReply, meta)
    assert first.session is not None
    assert (
        await stream_messages_at(
            running.nats_url, subjects.SESSION_EVENTS_STREAM.name, subjects.SESSION_ARCHIVED
        )
        == []
    )

    await running.bus.request(subjects.HISTORY_SESSION_CREATE, request, SessionReply, meta)

    events = await _wait_for_events(running.nats_url, subjects.SESSION_ARCHIVED, 1)
    event = SessionArchived.model_validate_json(events[0].data or b"")
    assert event.session_id == first.session.id
    assert event.user_id == "u1" and event.persona == "friend"
    headers = events[0].headers or {}
    assert headers["Nats-Msg-Id"] == f"{first.session.id}.archived"
    assert headers[subjects.HEADER_REQUEST_ID] == "req-archive"
    assert headers[subjects.HEADER_USER_ID] == "u1"


async def test_archive_delete_and_feed_over_the_bus(running: Running) -> None:
    meta = RequestMeta(request_id="req-lifecycle", user_id="u1")
    bus = running.bus
    created = await bus.request(
        subjects.HISTORY_SESSION_CREATE, CreateSession(user_id="u1", persona="p"), SessionReply,
        meta,
    )
    assert created.session is not None
    sid = created.session.id
    append = AppendMessage(
        user_id="u1", session_id=sid, job_id=uuid.uuid4(), role="user", content="hello",
        admission=admission(),
    )
    stored = await bus.request(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply, meta)
    feed = await bus.request(subjects.HISTORY_FEED, ListFeed(user_id="u1"), MessagePage, meta)
    assert feed.items == (stored.message,)

    archive = ArchiveSession(user_id="u1", session_id=sid)
    archived = await bus.request(subjects.HISTORY_SESSION_ARCHIVE, archive, SessionReply, meta)
    assert archived.session is not None and archived.session.status == "archived"
    deleted = await bus.request(
        subjects.HISTORY_SESSION_DELETE, DeleteSession(user_id="u1", session_id=sid), DeleteReply,
        meta,
    )
    assert deleted.deleted
    feed = await bus.request(subjects.HISTORY_FEED, ListFeed(user_id="u1"), MessagePage, meta)
    assert feed.items == ()

    [archived_msg] = await _wait_for_events(running.nats_url, subjects.SESSION_ARCHIVED, 1)
    [deleted_msg] = await _wait_for_events(running.nats_url, subjects.SESSION_DELETED, 1)
    assert (archived_msg.seq or 0) < (deleted_msg.seq or 0)
    event = SessionDeleted.model_validate_json(deleted_msg.data or b"")
    assert event.session_id == sid and event.user_id == "u1"
    headers = deleted_msg.headers or {}
    assert headers["Nats-Msg-Id"] == f"{sid}.deleted"
    assert headers[subjects.HEADER_REQUEST_ID] == "req-lifecycle"


async def test_an_event_committed_while_the_bus_is_down_is_published_once_later(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    broker = make_broker(Settings(nats_url=server.url), "history-test")
    url = f"sqlite+aiosqlite:///{tmp_path}/history.db"
    await DATABASE.migrate(url)
    store = store_at(url)
    relay = Relay(store, BusClient(broker, 1.0), interval=0.2, publish_timeout=0.5)
    service = build_service(store, RecordingPublisher())
    service.outbox = relay
    try:
        await broker.connect()
        await ensure_streams(broker, (subjects.SESSION_EVENTS_STREAM,))
        session = (
            await service.create_session(CreateSession(user_id="u1", persona="p"), META)
        ).session
        assert session is not None
        relay.start()

        server.stop(kill=True)
        reply = await service.archive_session(
            ArchiveSession(user_id="u1", session_id=session.id), META
        )
        assert reply.session is not None and reply.session.status == "archived"
        deadline = time.monotonic() + TIMEOUT
        while not relay._failing:
            assert time.monotonic() < deadline, "the relay never tried to publish"
            await asyncio.sleep(0.05)

        server.start()
        events = await _wait_for_events(server.url, subjects.SESSION_ARCHIVED, 1)
        while await relay.drain() or relay._failing:  # the row is marked sent
            assert time.monotonic() < deadline + TIMEOUT
            await asyncio.sleep(0.05)
        events = await stream_messages_at(
            server.url, subjects.SESSION_EVENTS_STREAM.name, subjects.SESSION_ARCHIVED
        )
        assert len(events) == 1
        assert (events[0].headers or {})["Nats-Msg-Id"] == f"{session.id}.archived"
        assert SessionArchived.model_validate_json(events[0].data or b"").session_id == session.id
    finally:
        await relay.stop()
        await broker.stop()
        await service.cache.aclose()
        await store.sql.close()
        server.stop()


async def _jobs_at(nats_url: str, count: int, settle: float = 0.0) -> list[RawStreamMsg]:
    """Wait until the chat-jobs stream holds ``count`` jobs (then ``settle`` more seconds)."""
    found = await eventually(
        lambda: stream_messages_at(
            nats_url, subjects.CHAT_JOBS_STREAM.name, subjects.CHAT_REQUESTED
        ),
        lambda jobs: len(jobs) >= count,
        TIMEOUT,
    )
    if settle:
        await asyncio.sleep(settle)
        found = await stream_messages_at(
            nats_url, subjects.CHAT_JOBS_STREAM.name, subjects.CHAT_REQUESTED
        )
    return found


async def test_an_admitted_job_reaches_the_chat_jobs_stream_once(running: Running) -> None:
    meta = RequestMeta(request_id="req-job", user_id="u1")
    bus = running.bus
    created = await bus.request(
        subjects.HISTORY_SESSION_CREATE, CreateSession(user_id="u1", persona="p"), SessionReply,
        meta,
    )
    assert created.session is not None
    append = AppendMessage(
        user_id="u1", session_id=created.session.id, job_id=uuid.uuid4(), role="user",
        content="hello", admission=admission(max_active_jobs=1),
    )
    stored = await bus.request(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply, meta)
    assert stored.created and stored.message is not None
    again = await bus.request(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply, meta)
    assert not again.created and again.error is None
    over = append.model_copy(update={"job_id": uuid.uuid4()})
    refused = await bus.request(subjects.HISTORY_MESSAGE_APPEND, over, MessageReply, meta)
    assert refused.error is not None and refused.error.code == "too_many_jobs"
    assert refused.error.retry_after is not None and refused.error.retry_after > 0

    [job] = await _jobs_at(running.nats_url, 1, settle=0.5)
    body = RequestChat.model_validate_json(job.data or b"")
    assert body.job_id == append.job_id and body.message_id == stored.message.id
    assert body.persona == "p" and body.follows is None and body.revision == 1
    headers = job.headers or {}
    assert headers["Nats-Msg-Id"] == str(append.job_id)
    assert headers[subjects.HEADER_REQUEST_ID] == "req-job"

    ended = await bus.request(
        subjects.HISTORY_JOB_END, EndJob(user_id="u1", job_id=append.job_id), JobEnded, meta
    )
    assert ended.known
    freed = await bus.request(subjects.HISTORY_MESSAGE_APPEND, over, MessageReply, meta)
    assert freed.created


class Crashing(Relay):
    """The process dies right after the commit: the announcement never leaves."""

    def announce(self, events: Any) -> None:
        return None


class Forgetting(Relay):
    """The process dies after publishing, before marking the rows sent."""

    async def flush_marks(self) -> None:
        self._sent.clear()


@pytest.mark.parametrize("death", [Crashing, Forgetting])
async def test_a_job_is_in_the_stream_exactly_once_whatever_dies_when(
    clean_nats: str, tmp_path: Path, death: type[Relay]
) -> None:
    broker = make_broker(Settings(nats_url=clean_nats), "history-test")
    url = f"sqlite+aiosqlite:///{tmp_path}/history.db"
    await DATABASE.migrate(url)
    store = store_at(url)
    bus = BusClient(broker, TIMEOUT)
    dying = build_service(store, RecordingPublisher())
    dying.outbox = death(store, bus)
    dying.appends.lease = 0.3
    later = Relay(store, bus, interval=0.1)  # the replica (or restart) that takes over
    try:
        await broker.connect()
        await ensure_streams(broker, (subjects.CHAT_JOBS_STREAM,))
        session = (
            await dying.create_session(CreateSession(user_id="u1", persona="p"), META)
        ).session
        assert session is not None
        append = AppendMessage(
            user_id="u1", session_id=session.id, job_id=uuid.uuid4(), role="user",
            content="hello", admission=admission(),
        )
        assert (await dying.append_message(append, META)).created
        await dying.outbox.settle()  # type: ignore[attr-defined]
        later.start()
        jobs = await _jobs_at(clean_nats, 1, settle=1.0)  # the lease ran out: the timer ran
        while await later.drain():
            pass
        jobs = await stream_messages_at(
            clean_nats, subjects.CHAT_JOBS_STREAM.name, subjects.CHAT_REQUESTED
        )
        assert len(jobs) == 1
        assert (jobs[0].headers or {})["Nats-Msg-Id"] == str(append.job_id)
        unsent = "SELECT count(*) FROM {s}.outbox WHERE sent_at IS NULL"
        assert (await store.sql.fetch(unsent))[0][0] == 0
    finally:
        await later.stop()
        await broker.stop()
        await dying.cache.aclose()
        await store.sql.close()
