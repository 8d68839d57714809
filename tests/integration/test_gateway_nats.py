"""The gateway against a real NATS server, with a history stand-in and a hand-driven agent."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts import subjects
from contracts.base import Contract, Pong, Reply, utcnow
from contracts.chat import JobState, RequestChat
from contracts.history import MessageRecord
from services.gateway.app import create_app
from tests.unit.test_gateway_fakes import FakeHistory, bearer, make_settings

pytestmark = pytest.mark.integration
STREAM = subjects.CHAT_JOBS_STREAM.name


@asynccontextmanager
async def responders(
    url: str, history: FakeHistory, serve: Iterable[str], pings: Iterable[str] = ()
) -> AsyncIterator[None]:
    """Answer the given history subjects from ``history``, and pings for other services."""
    broker = NatsBroker(url)
    handlers = history.handlers()
    for subject in serve:
        request_type, handle = handlers[subject]
        _respond(broker, subject, request_type, handle)
    for subject in pings:
        _respond(broker, subject, Contract, pong)
    await broker.start()
    # The server must know the subscriptions before anyone sends a request.
    await broker.connection.flush()
    try:
        yield
    finally:
        await broker.stop()


def pong(_: object) -> Pong:
    """Answer a ping as any service would."""
    return Pong(service="test", instance="t")


def _respond(
    broker: NatsBroker, subject: str, request_type: type[Contract], handle: Callable[[Any], Reply]
) -> None:
    async def answer(body: dict[str, Any]) -> dict[str, Any]:
        return handle(request_type.model_validate(body)).model_dump(mode="json")

    broker.subscriber(subject, queue="gateway-test")(answer)


@pytest.fixture
async def history() -> FakeHistory:
    return FakeHistory()


@pytest.fixture
async def client(clean_nats: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(nats_url=clean_nats))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


@pytest.fixture
async def nc(clean_nats: str) -> AsyncIterator[Client]:
    conn = await nats.connect(clean_nats)
    yield conn
    await conn.close()


@pytest.fixture
async def served(clean_nats: str, history: FakeHistory) -> AsyncIterator[FakeHistory]:
    async with responders(clean_nats, history, list(history.handlers())):
        yield history


async def new_session(client: httpx.AsyncClient, user: str = "alice") -> str:
    response = await client.post("/api/sessions", json={"persona": "default"}, headers=bearer(user))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def take_job(js: JetStreamContext) -> tuple[RequestChat, dict[str, str]]:
    """Pull one chat request from the stream, as the agent would, and ack it."""
    sub = await js.pull_subscribe(subjects.CHAT_REQUESTED, stream=STREAM)
    try:
        [msg] = await sub.fetch(1, timeout=10)
        await msg.ack()
    finally:
        await sub.unsubscribe()
    return RequestChat.model_validate_json(msg.data), dict(msg.headers or {})


async def complete(js: JetStreamContext, job_id: uuid.UUID) -> None:
    """Write the job's final state into the bucket, as the agent would."""
    kv = await js.key_value(subjects.JOBS_BUCKET)
    entry = await kv.get(str(job_id))
    assert entry.value is not None
    state = JobState.model_validate_json(entry.value)
    reply = MessageRecord(
        id=uuid.uuid4(),
        session_id=state.session_id,
        user_id=state.user_id,
        role="assistant",
        content="hello from the agent",
        created_at=utcnow(),
        job_id=job_id,
    )
    done = state.model_copy(
        update={"status": "completed", "reply": reply, "attempts": 1, "finished_at": utcnow()}
    )
    await kv.put(str(job_id), done.model_dump_json().encode())


async def stored_requests(js: JetStreamContext) -> int:
    return int((await js.stream_info(STREAM)).state.messages)


async def test_posted_message_becomes_a_durable_job(
    served: FakeHistory, client: httpx.AsyncClient, nc: Client
) -> None:
    sid = await new_session(client)
    response = await client.post(
        f"/api/sessions/{sid}/messages",
        json={"content": "what is JetStream?"},
        headers={**bearer(), "X-Request-ID": "int-1"},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    request, headers = await take_job(nc.jetstream())
    assert headers["Nats-Msg-Id"] == job["id"]
    assert headers[subjects.HEADER_REQUEST_ID] == "int-1"
    assert headers[subjects.HEADER_USER_ID] == "alice"
    assert str(request.job_id) == job["id"] and str(request.session_id) == sid
    assert request.content == "what is JetStream?"
    [stored] = served.messages[uuid.UUID(sid)]
    assert stored.id == request.message_id and stored.role == "user"
    polled = await client.get(response.headers["location"], headers=bearer())
    assert polled.json()["status"] == "queued"


async def test_wait_answers_200_when_the_agent_completes(
    served: FakeHistory, client: httpx.AsyncClient, nc: Client
) -> None:
    sid = await new_session(client)
    js = nc.jetstream()

    async def agent() -> None:
        request, _ = await take_job(js)
        await complete(js, request.job_id)

    worker = asyncio.create_task(agent())
    response = await client.post(
        f"/api/sessions/{sid}/messages?wait=5", json={"content": "hi"}, headers=bearer()
    )
    await worker
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert response.json()["reply"]["content"] == "hello from the agent"


async def test_idempotency_key_queues_one_message(
    served: FakeHistory, client: httpx.AsyncClient, nc: Client
) -> None:
    sid = await new_session(client)
    headers = {**bearer(), "Idempotency-Key": "same-key"}
    url = f"/api/sessions/{sid}/messages"
    first = await client.post(url, json={"content": "hi"}, headers=headers)
    second = await client.post(url, json={"content": "hi"}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert await stored_requests(nc.jetstream()) == 1
    assert len(served.messages[uuid.UUID(sid)]) == 1


async def test_another_user_sees_neither_session_nor_job(
    served: FakeHistory, client: httpx.AsyncClient
) -> None:
    sid = await new_session(client)
    job = await client.post(
        f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
    )
    mallory = bearer("mallory")
    assert (await client.get(f"/api/sessions/{sid}", headers=mallory)).status_code == 404
    assert (await client.get(f"/api/jobs/{job.json()['id']}", headers=mallory)).status_code == 404
    assert (await client.get(f"/api/jobs/{job.json()['id']}", headers=bearer())).status_code == 200


async def test_history_not_running_answers_503_and_publishes_nothing(
    client: httpx.AsyncClient, nc: Client
) -> None:
    response = await client.post(
        f"/api/sessions/{uuid.uuid4()}/messages", json={"content": "hi"}, headers=bearer()
    )
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.headers["content-type"] == "application/problem+json"
    assert await stored_requests(nc.jetstream()) == 0


async def test_history_lost_before_append_fails_the_job(
    clean_nats: str, history: FakeHistory, client: httpx.AsyncClient, nc: Client
) -> None:
    async with responders(clean_nats, history, [subjects.HISTORY_SESSION_CREATE]):
        sid = await new_session(client)
    # Sessions can still be read, but nothing stores messages any more.
    async with responders(clean_nats, history, [subjects.HISTORY_SESSION_GET]):
        response = await client.post(
            f"/api/sessions/{sid}/messages",
            json={"content": "hi"},
            headers={**bearer(), "Idempotency-Key": "lost"},
        )
        assert response.status_code == 503
        assert response.headers["retry-after"]
        again = await client.post(
            f"/api/sessions/{sid}/messages",
            json={"content": "hi"},
            headers={**bearer(), "Idempotency-Key": "lost"},
        )
    assert await stored_requests(nc.jetstream()) == 0
    assert again.json()["status"] == "failed"
    assert again.json()["error"]["code"] == "unavailable"


async def test_readyz_names_missing_services_until_they_answer(
    clean_nats: str, served: FakeHistory, client: httpx.AsyncClient
) -> None:
    partial = await client.get("/readyz")
    assert partial.status_code == 503
    assert partial.headers["retry-after"]
    states = partial.json()
    assert states["nats"] == "ok" and states["history"] == "ok"
    assert states["agent"].startswith("down") and states["memory"].startswith("down")
    async with responders(
        clean_nats, served, [], pings=[subjects.AGENT_PING, subjects.MEMORY_PING]
    ):
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"nats": "ok", "history": "ok", "agent": "ok", "memory": "ok"}
