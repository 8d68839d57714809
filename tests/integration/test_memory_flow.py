"""The memory service over a real NATS server, with stand-ins for history and the model.

History is a small FastStream responder over a dict of sessions; the model is an
OpenAI-compatible FastAPI app served by uvicorn that answers the memory
extraction with the simulated model's rule, reached through the real SDK.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import nats
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from faststream.nats import NatsBroker
from nats.js.api import RawStreamMsg

from contracts import subjects
from contracts.base import BusError, Ping, Pong, utcnow
from contracts.deadletter import DeadLetter
from contracts.history import ListMessages, MessagePage, MessageRecord, Role
from contracts.memory import (
    DeleteMemory,
    MemoriesStored,
    MemoryDeleted,
    MemoryPage,
    RecallMemories,
)
from contracts.sessions import SessionArchived, SessionDeleted
from services.launcher.natsserver import free_port
from services.memory.app import create_app, ensure_consumers
from services.memory.config import Settings
from services.runtime.bus import BusClient, ensure_streams
from services.runtime.meta import RequestMeta
from services.simllm.memories import memory_extraction_for, wants_memory_extraction
from tests.streams import eventually as polled
from tests.streams import stream_messages_at

pytestmark = pytest.mark.integration
TIMEOUT = 10.0
T = TypeVar("T")


@dataclass
class FakeLLM:
    """What the stand-in model was asked, and whether it fails every call."""

    fail: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)


def llm_app(state: FakeLLM) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> JSONResponse:
        body = await request.json()
        state.requests.append(body)
        if state.fail:
            error = {
                "message": "model on fire",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            return JSONResponse({"error": error}, status_code=500)
        assert wants_memory_extraction(body) and body.get("stream") is not True
        content = json.dumps(memory_extraction_for(body["messages"]))
        return JSONResponse(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "logprobs": None,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                    }
                ],
            }
        )

    return app


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task


@dataclass
class FakeHistory:
    """Sessions served over HISTORY_MESSAGE_LIST, oldest first, paged newest first."""

    sessions: dict[UUID, list[MessageRecord]] = field(default_factory=dict)
    pages: int = 0

    def add(self, user_id: str, *contents: str) -> UUID:
        sid = uuid.uuid4()
        roles: list[Role] = ["user", "assistant"]
        self.sessions[sid] = [
            MessageRecord(
                id=uuid.uuid4(),
                session_id=sid,
                user_id=user_id,
                role=roles[i % 2],
                content=text,
                created_at=utcnow(),
                job_id=None,
            )
            for i, text in enumerate(contents)
        ]
        return sid

    def page(self, req: ListMessages) -> MessagePage:
        self.pages += 1
        if req.session_id not in self.sessions:
            return MessagePage(error=BusError(code="not_found", message="no such session"))
        found = [m for m in self.sessions[req.session_id] if m.user_id == req.user_id]
        newest = found[::-1]
        start = int(req.cursor or 0)
        end = start + req.limit
        return MessagePage(
            items=tuple(newest[start:end]), next_cursor=str(end) if end < len(newest) else None
        )


@dataclass
class Stack:
    bus: BusClient
    nats_url: str
    history: FakeHistory
    llm: FakeLLM

    async def archive(
        self, sid: UUID, user_id: str = "alice", persona: str = "friend", msg_id: str | None = None
    ) -> SessionArchived:
        event = SessionArchived(
            session_id=sid, user_id=user_id, persona=persona, archived_at=utcnow()
        )
        await self.bus.publish(
            subjects.SESSION_ARCHIVED,
            event,
            RequestMeta(user_id=user_id),
            stream=subjects.SESSION_EVENTS_STREAM.name,
            msg_id=msg_id or f"{sid}.archived",
            timeout=TIMEOUT,
        )
        return event

    async def recall(self, user_id: str = "alice", **kwargs: Any) -> MemoryPage:
        return await self.bus.request(
            subjects.MEMORY_RECALL,
            RecallMemories(user_id=user_id, **kwargs),
            MemoryPage,
            RequestMeta(user_id=user_id),
            TIMEOUT,
        )

    async def contents(self, user_id: str = "alice") -> list[str]:
        return [m.content for m in (await self.recall(user_id)).items]


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/db/chatbus.db"
    from tests.integration.test_memory_database import DB

    url = str(request.getfixturevalue("postgres_url"))
    await DB.drop(url)
    return url


@pytest.fixture
async def stack(clean_nats: str, database_url: str) -> AsyncIterator[Stack]:
    history, llm = FakeHistory(), FakeLLM()
    responder = NatsBroker(clean_nats)

    @responder.subscriber(subjects.HISTORY_MESSAGE_LIST, queue=subjects.HISTORY_QUEUE)
    async def list_messages(req: ListMessages) -> MessagePage:
        return history.page(req)

    async with serving(llm_app(llm)) as base_url:
        settings = Settings(
            nats_url=clean_nats,
            database_url=database_url,
            instance="it-memory",
            openai_base_url=base_url,
            llm_max_retries=0,
            llm_timeout=10,
            memory_max_attempts=3,
            memory_retry_delay=0.1,
            memory_fetch_timeout=0.5,
        )
        client = NatsBroker(clean_nats)
        await responder.start()
        try:
            async with create_app(settings):
                await client.connect()
                try:
                    yield Stack(BusClient(client, TIMEOUT), clean_nats, history, llm)
                finally:
                    await client.stop()
        finally:
            await responder.stop()


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Poll ``probe`` until ``done`` holds or TIMEOUT passes; return the last value."""
    return await polled(probe, done, TIMEOUT)


async def settled(nats_url: str, durable: str) -> bool:
    """Tell whether the consumer has delivered and settled everything in its stream."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info(subjects.SESSION_EVENTS_STREAM.name, durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)
    finally:
        await nc.close()


async def stored_events(stack: Stack, count: int) -> list[RawStreamMsg]:
    return await eventually(
        lambda: stream_messages_at(
            stack.nats_url, subjects.MEMORY_EVENTS_STREAM.name, subjects.MEMORY_STORED
        ),
        lambda found: len(found) >= count,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
async def test_an_archived_session_becomes_memories(stack: Stack) -> None:
    chatter = [f"small talk {n}" for n in range(240)]  # two pages of history
    contents = ["My name is Ada", "Hi Ada", *chatter, "I like green tea", "Noted"]
    sid = stack.history.add("alice", *contents)
    await stack.archive(sid)

    events = await stored_events(stack, 1)
    assert len(events) == 1
    stored = MemoriesStored.model_validate_json(events[0].data or b"")
    assert (stored.session_id, stored.user_id, stored.persona) == (sid, "alice", "friend")
    assert (events[0].headers or {}).get("Nats-Msg-Id") == f"{sid}.memories"
    assert stack.history.pages == 2

    expected = memory_extraction_for([{"role": "user", "content": c} for c in contents[::2]])
    assert expected["memories"] == [
        "The user said: My name is Ada",
        "The user said: I like green tea",
    ]
    page = await stack.recall()
    assert [m.content for m in page.items] == expected["memories"][::-1]
    assert {m.id for m in page.items} == set(stored.memory_ids)
    assert all(m.persona == "friend" and m.session_id == sid for m in page.items)
    # The model saw the whole conversation, oldest first, after its instructions.
    sent = stack.llm.requests[0]["messages"]
    assert [m["content"] for m in sent[1:]] == contents and sent[0]["role"] == "system"

    assert await stack.contents("mallory") == []
    filtered = await stack.recall(query="TEA", persona="friend")
    assert [m.content for m in filtered.items] == ["The user said: I like green tea"]
    foreign = await stack.bus.request(
        subjects.MEMORY_DELETE,
        DeleteMemory(user_id="mallory", memory_id=page.items[0].id),
        MemoryDeleted,
        RequestMeta(),
        TIMEOUT,
    )
    assert foreign.error is not None and foreign.error.code == "not_found"
    deleted = await stack.bus.request(
        subjects.MEMORY_DELETE,
        DeleteMemory(user_id="alice", memory_id=page.items[0].id),
        MemoryDeleted,
        RequestMeta(),
        TIMEOUT,
    )
    assert deleted.deleted
    assert await stack.contents() == ["The user said: My name is Ada"]
    pong = await stack.bus.request(subjects.MEMORY_PING, Ping(), Pong, RequestMeta(), TIMEOUT)
    assert pong.instance == "it-memory"


async def test_the_same_event_twice_stores_memories_once(stack: Stack) -> None:
    sid = stack.history.add("alice", "I like tea", "ok", "I play chess")
    await stack.archive(sid, msg_id="first")
    await stored_events(stack, 1)
    # Beyond the dedup window the same event can arrive again under another message id.
    await stack.archive(sid, msg_id="second")
    assert await eventually(lambda: settled(stack.nats_url, subjects.MEMORY_ARCHIVED_DURABLE), bool)
    assert len(await stack.contents()) == 2
    assert len(stack.llm.requests) == 1
    assert len(await stored_events(stack, 1)) == 1


async def test_an_empty_session_is_settled_without_the_model(stack: Stack) -> None:
    sid = stack.history.add("alice")  # history knows the session; it has no messages
    await stack.archive(sid)
    assert await eventually(lambda: settled(stack.nats_url, subjects.MEMORY_ARCHIVED_DURABLE), bool)
    assert stack.llm.requests == []
    events = await stored_events(stack, 1)
    assert [MemoriesStored.model_validate_json(e.data or b"").memory_ids for e in events] == [()]


async def test_a_failing_model_ends_in_a_dead_letter_and_recall_still_answers(
    stack: Stack,
) -> None:
    stack.llm.fail = True
    sid = stack.history.add("alice", "I like tea")
    await stack.archive(sid)

    letters = await eventually(
        lambda: stream_messages_at(
            stack.nats_url, subjects.DEADLETTER_STREAM.name, subjects.deadletter("memory")
        ),
        lambda found: len(found) >= 1,
    )
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0].data or b"")
    assert letter.subject == subjects.SESSION_ARCHIVED
    assert letter.deliveries == 3
    assert "500" in letter.reason and "model on fire" in letter.reason
    assert SessionArchived.model_validate_json(letter.payload).session_id == sid
    assert len(stack.llm.requests) == 3
    assert await eventually(lambda: settled(stack.nats_url, subjects.MEMORY_ARCHIVED_DURABLE), bool)
    page = await stack.recall()
    assert page.error is None and page.items == ()

    # The service keeps serving: the next session is remembered once the model is back.
    stack.llm.fail = False
    later = stack.history.add("alice", "I like jazz")
    await stack.archive(later)
    await stored_events(stack, 1)
    assert await stack.contents() == ["The user said: I like jazz"]


async def test_a_deleted_session_takes_its_memories_along(stack: Stack) -> None:
    keep = stack.history.add("alice", "I like tea")
    gone = stack.history.add("alice", "I like jazz", "ok", "My dog is Rex")
    await stack.archive(keep)
    await stack.archive(gone)
    await stored_events(stack, 2)
    assert len(await stack.contents()) == 3

    deleted = SessionDeleted(session_id=gone, user_id="alice", deleted_at=utcnow())
    for msg_id in ("del-1", "del-2"):  # a repeat deletes nothing more
        await stack.bus.publish(
            subjects.SESSION_DELETED,
            deleted,
            RequestMeta(user_id="alice"),
            stream=subjects.SESSION_EVENTS_STREAM.name,
            msg_id=msg_id,
            timeout=TIMEOUT,
        )
    remaining = await eventually(stack.contents, lambda found: len(found) == 1)
    assert remaining == ["The user said: I like tea"]
    assert await eventually(lambda: settled(stack.nats_url, subjects.MEMORY_DELETED_DURABLE), bool)


async def test_consumer_limits_follow_the_settings_on_restart(clean_nats: str) -> None:
    broker = NatsBroker(clean_nats)
    await broker.connect()
    try:
        await ensure_streams(broker, (subjects.SESSION_EVENTS_STREAM,))
        for ack_wait in (60.0, 12.0):
            settings = Settings(
                nats_url=clean_nats,
                openai_base_url="http://127.0.0.1:9/v1",
                memory_ack_wait=ack_wait,
            )
            await ensure_consumers(broker, settings)
        js = broker.connection.jetstream()
        for durable in (subjects.MEMORY_ARCHIVED_DURABLE, subjects.MEMORY_DELETED_DURABLE):
            info = await js.consumer_info(subjects.SESSION_EVENTS_STREAM.name, durable)
            assert info.config.ack_wait == 12.0
            assert info.config.max_deliver == -1
    finally:
        await broker.stop()
