"""The history service over a real NATS server, started as it runs in production."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from faststream.nats import NatsBroker
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from contracts import subjects
from contracts.base import Ping, Pong
from contracts.deadletter import DeadLetter
from contracts.history import (
    AppendMessage,
    CreateSession,
    GetSession,
    ListMessages,
    ListSessions,
    MessagePage,
    MessageReply,
    SessionPage,
    SessionReply,
)
from contracts.sessions import SessionArchived
from services.history.app import create_app
from services.history.config import Settings
from services.runtime.bus import BusClient, RequestMeta

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


async def _stream_messages(nats_url: str, stream: str, subject: str) -> list[RawStreamMsg]:
    """Return every message the stream holds on the subject, oldest first."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        found: list[RawStreamMsg] = []
        if info.state.messages == 0:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except NotFoundError:
                continue
            if msg.subject == subject:
                found.append(msg)
        return found
    finally:
        await nc.close()


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
        user_id="u1", session_id=sid, job_id=uuid.uuid4(), role="user", content="hello"
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

    letters = await _stream_messages(
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
        await _stream_messages(
            running.nats_url, subjects.SESSION_EVENTS_STREAM.name, subjects.SESSION_ARCHIVED
        )
        == []
    )

    await running.bus.request(subjects.HISTORY_SESSION_CREATE, request, SessionReply, meta)

    events = await _stream_messages(
        running.nats_url, subjects.SESSION_EVENTS_STREAM.name, subjects.SESSION_ARCHIVED
    )
    assert len(events) == 1
    event = SessionArchived.model_validate_json(events[0].data or b"")
    assert event.session_id == first.session.id
    assert event.user_id == "u1" and event.persona == "friend"
    headers = events[0].headers or {}
    assert headers["Nats-Msg-Id"] == f"{first.session.id}.archived"
    assert headers[subjects.HEADER_REQUEST_ID] == "req-archive"
    assert headers[subjects.HEADER_USER_ID] == "u1"
