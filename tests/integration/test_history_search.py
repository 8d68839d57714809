"""History's message search over a real NATS server: the user's own messages, any case."""

import uuid

import pytest

from contracts import subjects
from contracts.deadletter import DeadLetter
from contracts.history import (
    AppendMessage,
    CreateSession,
    MessagePage,
    MessageReply,
    SearchMessages,
    SessionReply,
)
from services.runtime.meta import RequestMeta
from tests.integration.test_history_bus import TIMEOUT, Running, running
from tests.streams import stream_messages_at
from tests.unit.test_history_service import admission

pytestmark = pytest.mark.integration
__all__ = ["running"]  # the fixture, imported so pytest finds it


async def say(r: Running, user: str, persona: str, *texts: str) -> None:
    meta = RequestMeta(user_id=user)
    created = await r.bus.request(
        subjects.HISTORY_SESSION_CREATE, CreateSession(user_id=user, persona=persona),
        SessionReply, meta,
    )
    assert created.session is not None
    for text in texts:
        append = AppendMessage(
            user_id=user, session_id=created.session.id, job_id=uuid.uuid4(),
            role="user", content=text, admission=admission(),
        )
        reply = await r.bus.request(subjects.HISTORY_MESSAGE_APPEND, append, MessageReply, meta)
        assert reply.error is None


async def search(r: Running, user: str, query: str, limit: int = 20) -> list[str]:
    page = await r.bus.request(
        subjects.HISTORY_SEARCH, SearchMessages(user_id=user, query=query, limit=limit),
        MessagePage, RequestMeta(user_id=user),
    )
    assert page.error is None
    return [m.content for m in page.items]


async def test_search_finds_own_messages_across_sessions_newest_first(running: Running) -> None:
    await say(running, "alice", "a", "I drink Green Tea", "nothing here")
    await say(running, "alice", "b", "green tea again", "100% sure_thing")
    await say(running, "bob", "a", "bob likes green tea too")

    assert await search(running, "alice", "GREEN tea") == ["green tea again", "I drink Green Tea"]
    assert await search(running, "alice", "green", limit=1) == ["green tea again"]
    assert await search(running, "bob", "tea") == ["bob likes green tea too"]
    assert await search(running, "carol", "tea") == []
    # LIKE wildcards in the query are plain text.
    assert await search(running, "alice", "0% s") == ["100% sure_thing"]
    assert await search(running, "alice", "%") == ["100% sure_thing"]
    assert await search(running, "alice", "n_t") == []  # "not" would match a wildcard


async def test_malformed_search_is_answered_invalid_and_dead_lettered(running: Running) -> None:
    answer = await running.client.request(
        b'{"user_id": "u1", "query": ""}', subjects.HISTORY_SEARCH,
        headers={subjects.HEADER_REQUEST_ID: "bad-search"}, timeout=TIMEOUT,
    )
    page = MessagePage.model_validate_json(answer.body)
    assert page.error is not None and page.error.code == "invalid"
    assert "query" in page.error.message
    letters = await stream_messages_at(
        running.nats_url, subjects.DEADLETTER_STREAM.name, subjects.deadletter("history")
    )
    (letter,) = [DeadLetter.model_validate_json(m.data or b"") for m in letters]
    assert letter.subject == subjects.HISTORY_SEARCH
    assert letter.headers[subjects.HEADER_REQUEST_ID] == "bad-search"
