"""Rules of the memory service against a real store (SQLite here; the integration tier
runs the same tests against Postgres by overriding ``database_url``)."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from contracts.base import utcnow
from contracts.history import MessageRecord, Role
from contracts.memory import DeleteMemory, MemoriesStored, RecallMemories
from contracts.sessions import SessionArchived, SessionDeleted
from services.memory.errors import (
    EventNotStored,
    HistoryUnavailable,
    InvalidInput,
    InvalidModelOutput,
    NotFound,
)
from services.memory.llm import parse
from services.memory.models import DATABASE, SCHEMA
from services.memory.service import MemoryService, Outcome
from services.memory.store import Store
from services.runtime.meta import RequestMeta
from services.runtime.sql import database

META = RequestMeta(request_id="req-1", user_id="alice")


def message(session_id: UUID, role: Role, content: str, user_id: str = "alice") -> MessageRecord:
    return MessageRecord(
        id=uuid.uuid4(),
        session_id=session_id,
        user_id=user_id,
        role=role,
        content=content,
        created_at=utcnow(),
        job_id=None,
    )


def archived(
    session_id: UUID | None = None, user_id: str = "alice", persona: str = "default"
) -> SessionArchived:
    return SessionArchived(
        session_id=session_id or uuid.uuid4(),
        user_id=user_id,
        persona=persona,
        archived_at=utcnow(),
    )


@dataclass
class FakeHistory:
    """Sessions by id; ``fail`` makes every call fail like an unreachable history."""

    sessions: dict[UUID, list[MessageRecord]] = field(default_factory=dict)
    fail: bool = False
    calls: int = 0

    async def session_messages(
        self, user_id: str, session_id: UUID, meta: RequestMeta
    ) -> list[MessageRecord] | None:
        self.calls += 1
        if self.fail:
            raise HistoryUnavailable("history did not answer")
        found = self.sessions.get(session_id)
        return None if found is None else [m for m in found if m.user_id == user_id]


@dataclass
class FakeModel:
    """Answers each user message as one memory, or the raw ``answer`` text when set."""

    answer: str | None = None
    calls: list[list[str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    expect: int = 1

    async def extract(self, messages: Sequence[MessageRecord]) -> list[str]:
        self.calls.append([m.content for m in messages])
        if len(self.calls) >= self.expect:
            self.arrived.set()
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 10)
        if self.answer is not None:
            return parse(self.answer)
        return [f"The user said: {m.content}" for m in messages if m.role == "user"]


@dataclass
class FakeEvents:
    sent: list[MemoriesStored] = field(default_factory=list)
    fail: bool = False

    async def memories_stored(self, event: MemoriesStored, meta: RequestMeta) -> None:
        if self.fail:
            raise EventNotStored("stream unavailable")
        self.sent.append(event)


async def no_heartbeat() -> None:
    return None


@dataclass
class World:
    service: MemoryService
    history: FakeHistory
    model: FakeModel
    events: FakeEvents

    def session(self, *contents: str, user_id: str = "alice") -> UUID:
        sid = uuid.uuid4()
        roles: list[Role] = ["user", "assistant"]
        self.history.sessions[sid] = [
            message(sid, roles[i % 2], text, user_id) for i, text in enumerate(contents)
        ]
        return sid

    async def recall(self, user_id: str = "alice", **kwargs: Any) -> list[str]:
        page = await self.service.recall(RecallMemories(user_id=user_id, **kwargs), META)
        return [m.content for m in page.items]


@pytest.fixture(name="database_url")
def database_url_fixture(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/nested/memory.db"


@pytest.fixture(name="world")
async def world_fixture(database_url: str) -> AsyncIterator[World]:
    await DATABASE.migrate(database_url)
    sql = database(database_url, schema=SCHEMA)
    history, model, events = FakeHistory(), FakeModel(), FakeEvents()
    service = MemoryService(
        Store(sql),
        history,
        model,
        events,
        instance="unit",
        max_per_session=10,
        heartbeat_interval=0.01,
    )
    yield World(service, history, model, events)
    await sql.close()


async def test_an_archived_session_is_remembered_once(world: World) -> None:
    sid = world.session("I like tea", "Noted.", "My cat is Tom", "Sure.")
    event = archived(sid)

    assert await world.service.generate(event, META, no_heartbeat) is Outcome.STORED
    assert await world.service.generate(event, META, no_heartbeat) is Outcome.SKIPPED

    assert len(world.model.calls) == 1
    assert world.model.calls[0] == ["I like tea", "Noted.", "My cat is Tom", "Sure."]
    # Newest first: the later memory of the session comes first.
    assert await world.recall() == ["The user said: My cat is Tom", "The user said: I like tea"]
    assert len(world.events.sent) == 1
    sent = world.events.sent[0]
    assert (sent.session_id, sent.user_id, sent.persona) == (sid, "alice", "default")
    page = await world.service.recall(RecallMemories(user_id="alice"), META)
    assert set(sent.memory_ids) == {m.id for m in page.items}


async def test_an_empty_session_is_recorded_without_asking_the_model(world: World) -> None:
    sid = world.session()
    event = archived(sid)

    assert await world.service.generate(event, META, no_heartbeat) is Outcome.STORED
    assert await world.service.generate(event, META, no_heartbeat) is Outcome.SKIPPED

    assert world.model.calls == []
    assert world.history.calls == 1
    assert [e.memory_ids for e in world.events.sent] == [()]
    assert await world.recall() == []


@pytest.mark.parametrize(
    "answer", ["not json", '{"memories": "one"}', '{"facts": []}', '{"memories": [1]}', ""]
)
async def test_an_invalid_model_answer_fails_the_attempt_and_stores_nothing(
    world: World, answer: str
) -> None:
    sid = world.session("I like tea")
    world.model.answer = answer

    with pytest.raises(InvalidModelOutput):
        await world.service.generate(archived(sid), META, no_heartbeat)

    assert await world.recall() == []
    assert world.events.sent == []
    world.model.answer = None  # the next attempt gets a good answer and stores
    assert await world.service.generate(archived(sid), META, no_heartbeat) is Outcome.STORED
    assert await world.recall() == ["The user said: I like tea"]


async def test_history_unavailable_fails_the_attempt(world: World) -> None:
    sid = world.session("I like tea")
    world.history.fail = True
    with pytest.raises(HistoryUnavailable):
        await world.service.generate(archived(sid), META, no_heartbeat)
    assert world.model.calls == []


async def test_a_session_history_no_longer_knows_stores_nothing(world: World) -> None:
    assert await world.service.generate(archived(), META, no_heartbeat) is Outcome.GONE
    assert world.model.calls == [] and world.events.sent == []


async def test_an_unpublished_event_is_published_on_redelivery_without_the_model(
    world: World,
) -> None:
    sid = world.session("I like tea", "ok", "I run daily")
    world.events.fail = True
    with pytest.raises(EventNotStored):
        await world.service.generate(archived(sid), META, no_heartbeat)
    stored = await world.service.recall(RecallMemories(user_id="alice"), META)
    assert len(stored.items) == 2

    world.events.fail = False
    assert await world.service.generate(archived(sid), META, no_heartbeat) is Outcome.ANNOUNCED
    assert await world.service.generate(archived(sid), META, no_heartbeat) is Outcome.SKIPPED
    assert len(world.model.calls) == 1
    assert [set(e.memory_ids) for e in world.events.sent] == [{m.id for m in stored.items}]


async def test_model_answers_are_cleaned_and_capped(world: World) -> None:
    world.service.max_per_session = 3
    many = [f"  fact   {i} " for i in range(6)]
    world.model.answer = (
        '{"memories": ["", "  ", "x'
        + "y" * 600
        + '", "Fact 0", '
        + ", ".join(f'"{m}"' for m in many)
        + "]}"
    )
    sid = world.session("I like tea")
    await world.service.generate(archived(sid), META, no_heartbeat)
    assert await world.recall() == ["fact 2", "fact 1", "Fact 0"]


async def test_the_model_call_is_kept_alive_by_heartbeats(world: World) -> None:
    beats = 0
    world.model.gate = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal beats
        beats += 1
        if beats >= 3:
            assert world.model.gate is not None
            world.model.gate.set()

    sid = world.session("I like tea")
    assert await world.service.generate(archived(sid), META, heartbeat) is Outcome.STORED
    assert beats >= 3


async def test_recall_filters_by_persona_and_text_and_pages(world: World) -> None:
    tea = world.session("I like TEA", "ok", "I like coffee", "ok", "My dog is 100% loud")
    await world.service.generate(archived(tea, persona="friend"), META, no_heartbeat)
    other = world.session("I like green tea")
    await world.service.generate(archived(other, persona="coach"), META, no_heartbeat)

    assert await world.recall(persona="coach") == ["The user said: I like green tea"]
    assert await world.recall(query="tea") == [
        "The user said: I like green tea",
        "The user said: I like TEA",
    ]
    assert await world.recall(persona="friend", query="Tea") == ["The user said: I like TEA"]
    assert await world.recall(query="100%") == ["The user said: My dog is 100% loud"]
    assert await world.recall(query="0%l") == []  # % matches itself, not any text
    assert await world.recall(query="like_") == []

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await world.service.recall(
            RecallMemories(user_id="alice", limit=1, cursor=cursor), META
        )
        seen.extend(m.content for m in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == await world.recall()
    assert len(seen) == 4


async def test_another_user_sees_and_deletes_nothing(world: World) -> None:
    sid = world.session("I like tea")
    await world.service.generate(archived(sid), META, no_heartbeat)
    mine = (await world.service.recall(RecallMemories(user_id="alice"), META)).items[0]

    assert await world.recall(user_id="mallory") == []
    with pytest.raises(NotFound):
        await world.service.delete_memory(DeleteMemory(user_id="mallory", memory_id=mine.id), META)
    assert await world.recall() == ["The user said: I like tea"]


async def test_delete_removes_one_memory_and_a_repeat_is_not_found(world: World) -> None:
    sid = world.session("I like tea", "ok", "I like jazz")
    await world.service.generate(archived(sid), META, no_heartbeat)
    first = (await world.service.recall(RecallMemories(user_id="alice"), META)).items[0]

    deleted = await world.service.delete_memory(
        DeleteMemory(user_id="alice", memory_id=first.id), META
    )
    assert deleted.deleted
    assert await world.recall() == ["The user said: I like tea"]
    with pytest.raises(NotFound):
        await world.service.delete_memory(DeleteMemory(user_id="alice", memory_id=first.id), META)
    with pytest.raises(NotFound):
        await world.service.delete_memory(
            DeleteMemory(user_id="alice", memory_id=uuid.uuid4()), META
        )


@pytest.mark.parametrize("cursor", ["garbage", "cnwyMDI0fHg", "bXwyMDI0LTAxLTAxfGFi"])
async def test_a_bad_cursor_is_invalid(world: World, cursor: str) -> None:
    with pytest.raises(InvalidInput):
        await world.service.recall(RecallMemories(user_id="alice", cursor=cursor), META)


async def test_a_deleted_session_forgets_its_memories_and_stays_forgotten(world: World) -> None:
    keep = world.session("I like tea")
    gone = world.session("I like jazz", "ok", "My name is Al")
    await world.service.generate(archived(keep), META, no_heartbeat)
    await world.service.generate(archived(gone), META, no_heartbeat)
    deleted = SessionDeleted(session_id=gone, user_id="alice", deleted_at=utcnow())

    assert await world.service.forget_session(deleted, META) == 2
    assert await world.service.forget_session(deleted, META) == 0
    assert await world.recall() == ["The user said: I like tea"]
    # A late (redelivered) archived event of the deleted session stores nothing again.
    assert await world.service.generate(archived(gone), META, no_heartbeat) is Outcome.SKIPPED
    assert await world.recall() == ["The user said: I like tea"]


async def test_a_session_deleted_before_it_was_archived_is_never_remembered(
    world: World,
) -> None:
    sid = world.session("I like tea")
    deleted = SessionDeleted(session_id=sid, user_id="alice", deleted_at=utcnow())
    assert await world.service.forget_session(deleted, META) == 0
    assert await world.service.generate(archived(sid), META, no_heartbeat) is Outcome.SKIPPED
    assert world.model.calls == [] and await world.recall() == []


async def test_concurrent_deliveries_of_one_event_store_it_once(world: World) -> None:
    sid = world.session("I like tea", "ok", "I like jazz")
    world.model.gate = asyncio.Event()
    world.model.expect = 3
    runs = [
        asyncio.create_task(world.service.generate(archived(sid), META, no_heartbeat))
        for _ in range(3)
    ]
    # All three read "not processed" and reach the model before any stores.
    await asyncio.wait_for(world.model.arrived.wait(), 10)
    world.model.gate.set()
    outcomes = await asyncio.gather(*runs)
    assert sorted(o.value for o in outcomes) == ["skipped", "skipped", "stored"]
    assert len(await world.recall()) == 2


async def test_memories_come_back_with_aware_utc_times(world: World) -> None:
    sid = world.session("I like tea")
    before = utcnow()
    await world.service.generate(archived(sid), META, no_heartbeat)
    item = (await world.service.recall(RecallMemories(user_id="alice"), META)).items[0]
    assert item.created_at.utcoffset() == timedelta(0)
    assert before <= item.created_at <= utcnow() + timedelta(seconds=1)
