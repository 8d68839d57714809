"""Archive, delete, feed and memories through the gateway, with the real history and memory.

History and memory run as in production (their ``create_app``) on SQLite files of
their own; the model behind memory is a small OpenAI-compatible stand-in that
remembers every user message. No agent runs: posted messages stay queued jobs.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from contracts import subjects
from contracts.chat import CancelRequest
from contracts.sessions import SessionArchived, SessionDeleted
from services.gateway.app import create_app as create_gateway
from services.history.app import create_app as create_history
from services.history.config import Settings as HistorySettings
from services.launcher.natsserver import free_port
from services.memory.app import create_app as create_memory
from services.memory.config import Settings as MemorySettings
from tests.streams import eventually as polled
from tests.streams import stream_messages_at
from tests.unit.test_gateway_fakes import bearer, make_settings

pytestmark = pytest.mark.integration
TIMEOUT = 15.0
T = TypeVar("T")


def remembering_model() -> FastAPI:
    """Answer every completion with one memory per user message."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> JSONResponse:
        body = await request.json()
        said = [m["content"] for m in body["messages"] if m["role"] == "user"]
        content = json.dumps({"memories": [f"The user said: {text}" for text in said]})
        message = {"role": "assistant", "content": content, "refusal": None}
        choice = {"index": 0, "finish_reason": "stop", "logprobs": None, "message": message}
        return JSONResponse(
            {
                "id": "chatcmpl-gateway-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [choice],
            }
        )

    return app


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` on a free local port; yield its OpenAI base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
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


@pytest.fixture
async def client(clean_nats: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    history = create_history(
        HistorySettings(
            nats_url=clean_nats,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/history.db",
            instance="gw-it-history",
            outbox_interval=0.2,
        )
    )
    async with serving(remembering_model()) as model_url:
        memory = create_memory(
            MemorySettings(
                nats_url=clean_nats,
                database_url=f"sqlite+aiosqlite:///{tmp_path}/memory.db",
                instance="gw-it-memory",
                openai_base_url=model_url,
                llm_max_retries=0,
                llm_timeout=10,
                memory_fetch_timeout=0.5,
            )
        )
        gateway = create_gateway(make_settings(nats_url=clean_nats, bus_request_timeout=5.0))
        async with history, memory, gateway.router.lifespan_context(gateway):
            transport = httpx.ASGITransport(app=gateway)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                yield http


async def session_events(nats_url: str, subject: str) -> list[bytes]:
    """Return the bodies the session-events stream holds on ``subject``, oldest first."""
    stream = subjects.SESSION_EVENTS_STREAM.name
    return [m.data for m in await stream_messages_at(nats_url, stream, subject) if m.data]


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Poll ``probe`` until ``done`` holds or TIMEOUT passes; return the last value."""
    return await polled(probe, done, TIMEOUT)


async def new_session(client: httpx.AsyncClient, persona: str, user: str = "alice") -> str:
    response = await client.post("/api/sessions", json={"persona": persona}, headers=bearer(user))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def say(client: httpx.AsyncClient, sid: str, content: str) -> str:
    response = await client.post(
        f"/api/sessions/{sid}/messages", json={"content": content}, headers=bearer()
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def memories(client: httpx.AsyncClient, query: str = "", user: str = "alice") -> list[Any]:
    response = await client.get(f"/api/memories{query}", headers=bearer(user))
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_archive_emits_the_event_and_its_memories_can_be_listed_and_deleted(
    clean_nats: str, client: httpx.AsyncClient
) -> None:
    sid = await new_session(client, "friend")
    await say(client, sid, "I like green tea")
    archived = await client.post(f"/api/sessions/{sid}/archive", headers=bearer())
    assert archived.status_code == 202, archived.text
    assert archived.json()["status"] == "archived" and archived.json()["archived_at"]
    again = await client.post(f"/api/sessions/{sid}/archive", headers=bearer())
    assert again.status_code == 202 and again.json() == archived.json()
    foreign = await client.post(f"/api/sessions/{sid}/archive", headers=bearer("mallory"))
    assert foreign.status_code == 404

    events = await eventually(
        lambda: session_events(clean_nats, subjects.SESSION_ARCHIVED), lambda found: bool(found)
    )
    [event] = [SessionArchived.model_validate_json(data) for data in events]
    assert (str(event.session_id), event.user_id, event.persona) == (sid, "alice", "friend")

    found = await eventually(lambda: memories(client), lambda items: bool(items))
    [memory] = found
    assert memory["content"] == "The user said: I like green tea"
    assert (memory["session_id"], memory["persona"]) == (sid, "friend")
    assert [m["id"] for m in await memories(client, "?q=GREEN&persona=friend")] == [memory["id"]]
    assert await memories(client, "?q=coffee") == []
    assert await memories(client, "?persona=coach") == []
    assert await memories(client, user="mallory") == []
    bad = await client.get("/api/memories?cursor=bogus", headers=bearer())
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["query", "cursor"]

    url = f"/api/memories/{memory['id']}"
    assert (await client.delete(url, headers=bearer("mallory"))).status_code == 404
    deleted = await client.delete(url, headers=bearer())
    assert deleted.status_code == 204 and deleted.content == b""
    assert await memories(client) == []
    assert (await client.delete(url, headers=bearer())).status_code == 404


async def cancel_requested(nats_url: str, job_id: str) -> bool:
    """Tell whether the cancel bucket holds a request for the job."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(subjects.CANCELS_BUCKET)
        entry = await kv.get(job_id)
        return CancelRequest.model_validate_json(entry.value or b"").job_id == uuid.UUID(job_id)
    finally:
        await nc.close()


async def test_delete_cancels_jobs_then_the_session_and_its_memories_go(
    clean_nats: str, client: httpx.AsyncClient
) -> None:
    sid = await new_session(client, "friend")
    job_id = await say(client, sid, "My name is Ada")
    assert (await client.post(f"/api/sessions/{sid}/archive", headers=bearer())).status_code == 202
    await eventually(lambda: memories(client), lambda items: bool(items))

    foreign = await client.delete(f"/api/sessions/{sid}", headers=bearer("mallory"))
    assert foreign.status_code == 404
    deleted = await client.delete(f"/api/sessions/{sid}", headers=bearer())
    assert deleted.status_code == 204 and deleted.content == b""
    assert (await client.get(f"/api/sessions/{sid}", headers=bearer())).status_code == 404
    assert (await client.delete(f"/api/sessions/{sid}", headers=bearer())).status_code == 404
    # No agent runs here: the job's cancel is asked for, for the agent that takes it.
    assert await cancel_requested(clean_nats, job_id)

    events = await eventually(
        lambda: session_events(clean_nats, subjects.SESSION_DELETED), lambda found: bool(found)
    )
    [event] = [SessionDeleted.model_validate_json(data) for data in events]
    assert (str(event.session_id), event.user_id) == (sid, "alice")
    assert await eventually(lambda: memories(client), lambda items: not items) == []
    feed = await client.get("/api/history", headers=bearer())
    assert feed.json() == {"items": [], "next_cursor": None}


async def test_history_feed_spans_sessions_newest_first_in_pages(
    client: httpx.AsyncClient,
) -> None:
    first, second = await new_session(client, "friend"), await new_session(client, "coach")
    order = [first, second, first, second, first]
    for n, sid in enumerate(order):
        await say(client, sid, f"message {n}")
    other = await new_session(client, "friend", user="bob")
    bob = await client.post(
        f"/api/sessions/{other}/messages", json={"content": "bob's"}, headers=bearer("bob")
    )
    assert bob.status_code == 202

    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while len(pages) < 5:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/api/history", params=params, headers=bearer())
        assert response.status_code == 200, response.text
        pages.append(response.json()["items"])
        if (cursor := response.json()["next_cursor"]) is None:
            break
    assert [len(page) for page in pages] == [2, 2, 1]
    items = [m for page in pages for m in page]
    assert [m["content"] for m in items] == [f"message {n}" for n in range(4, -1, -1)]
    assert [m["session_id"] for m in items] == order[::-1]
    assert all(m["role"] == "user" for m in items)

    bad = await client.get("/api/history?cursor=bogus", headers=bearer())
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["errors"][0]["loc"] == ["query", "cursor"]
    too_many = await client.get("/api/history?limit=201", headers=bearer())
    assert too_many.status_code == 422
