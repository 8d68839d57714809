"""Sessions, messages, jobs and readiness through the gateway over an in-memory bus."""

import asyncio
import time
import uuid
from typing import Any

import httpx

from contracts import subjects
from contracts.base import Pong, utcnow
from contracts.chat import JobLane, JobState, RequestChat
from contracts.history import MessageRecord
from services.runtime.meta import BusTimeout, BusUnavailable
from tests.unit.test_gateway_fakes import FakeBus, bearer, gateway_client


async def new_session(client: httpx.AsyncClient, user: str = "alice", **body: Any) -> str:
    response = await client.post("/api/sessions", json=body, headers=bearer(user))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_session_shapes_hide_internal_fields() -> None:
    async with gateway_client() as (client, _):
        created = await client.post(
            "/api/sessions", json={"persona": "friend-1", "title": "hello"}, headers=bearer()
        )
        sid = created.json()["id"]
        read = await client.get(f"/api/sessions/{sid}", headers=bearer())
    assert created.status_code == 201
    assert set(created.json()) == {
        "id",
        "persona",
        "title",
        "status",
        "created_at",
        "updated_at",
        "archived_at",
        "message_count",
    }
    assert read.json() == created.json()
    assert read.json()["status"] == "active"


async def test_new_session_archives_the_previous_one_of_the_persona() -> None:
    async with gateway_client() as (client, _):
        first = await new_session(client, persona="p")
        other = await new_session(client, persona="q")
        second = await new_session(client, persona="p")
        archived = await client.get("/api/sessions?status=archived", headers=bearer())
        active = await client.get("/api/sessions?status=active", headers=bearer())
    assert [s["id"] for s in archived.json()["items"]] == [first]
    assert [s["id"] for s in active.json()["items"]] == [second, other]


async def test_session_list_pages_with_cursor() -> None:
    async with gateway_client() as (client, _):
        ids = [await new_session(client, persona=f"p{i}") for i in range(3)]
        first = (await client.get("/api/sessions?limit=2", headers=bearer())).json()
        rest = (
            await client.get(
                f"/api/sessions?limit=2&cursor={first['next_cursor']}", headers=bearer()
            )
        ).json()
    assert [s["id"] for s in first["items"]] + [s["id"] for s in rest["items"]] == ids[::-1]
    assert rest["next_cursor"] is None


async def test_another_users_session_and_job_are_not_found() -> None:
    async with gateway_client() as (client, _):
        sid = await new_session(client)
        job = await client.post(
            f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
        )
        mallory = bearer("mallory")
        assert (await client.get(f"/api/sessions/{sid}", headers=mallory)).status_code == 404
        assert (
            await client.get(f"/api/sessions/{sid}/messages", headers=mallory)
        ).status_code == 404
        posted = await client.post(
            f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=mallory
        )
        assert posted.status_code == 404
        assert (
            await client.get(f"/api/jobs/{job.json()['id']}", headers=mallory)
        ).status_code == 404
        assert (await client.get(f"/api/jobs/{uuid.uuid4()}", headers=bearer())).status_code == 404


async def test_post_message_stores_it_and_queues_one_job() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        response = await client.post(
            f"/api/sessions/{sid}/messages",
            json={"content": "what is NATS?"},
            headers={**bearer(), "X-Request-ID": "post-1"},
        )
        messages = (await client.get(f"/api/sessions/{sid}/messages", headers=bearer())).json()
        polled = await client.get(response.headers["location"], headers=bearer())
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempts"] == 0 and job["reply"] is None
    assert polled.json() == job
    [message] = messages["items"]
    assert message["role"] == "user" and message["job_id"] == job["id"]
    [published] = bus.published
    assert published.subject == subjects.CHAT_REQUESTED
    assert published.stream == subjects.CHAT_JOBS_STREAM.name
    assert published.msg_id == job["id"]
    assert isinstance(published.body, RequestChat)
    assert str(published.body.message_id) == message["id"]
    assert published.body.content == "what is NATS?"
    assert published.body.persona == "default"


async def test_every_bus_call_carries_request_meta() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        bus.calls.clear()
        before = time.time()
        await client.post(
            f"/api/sessions/{sid}/messages",
            json={"content": "hi"},
            headers={**bearer("alice"), "X-Request-ID": "meta-1"},
        )
    # One history request per message: the append checks the session and names its persona.
    assert [subject for subject, _ in bus.calls] == [
        subjects.HISTORY_MESSAGE_APPEND,
        subjects.CHAT_REQUESTED,
    ]
    for _, meta in bus.calls:
        assert meta.request_id == "meta-1"
        assert meta.user_id == "alice"
        assert meta.deadline is not None and meta.deadline > before


async def test_blank_content_and_bad_wait_get_422() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        url = f"/api/sessions/{sid}/messages"
        blank = await client.post(url, json={"content": " \n\t "}, headers=bearer())
        empty = await client.post(url, json={"content": ""}, headers=bearer())
        too_long = await client.post(f"{url}?wait=61", json={"content": "x"}, headers=bearer())
        negative = await client.post(f"{url}?wait=-1", json={"content": "x"}, headers=bearer())
        extra = await client.post(url, json={"content": "x", "role": "assistant"}, headers=bearer())
    for response in (blank, empty, too_long, negative, extra):
        assert response.status_code == 422
        assert response.json()["errors"]
    assert bus.published == []


async def test_message_to_archived_or_missing_session() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        old = await new_session(client)
        await new_session(client)
        archived = await client.post(
            f"/api/sessions/{old}/messages", json={"content": "hi"}, headers=bearer()
        )
        missing = await client.post(
            f"/api/sessions/{uuid.uuid4()}/messages", json={"content": "hi"}, headers=bearer()
        )
    assert archived.status_code == 409
    assert missing.status_code == 404
    assert bus.published == [] and bus.jobs == {}
    # The refused jobs joined their lanes before history refused them, and left again.
    lanes = [JobLane.model_validate_json(e.value) for e in bus.lanes_kv.entries.values()]
    assert lanes and all(lane.jobs == () for lane in lanes)


async def test_same_idempotency_key_returns_the_same_job() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        url = f"/api/sessions/{sid}/messages"
        key = {"Idempotency-Key": "k-1"}
        first = await client.post(url, json={"content": "hi"}, headers={**bearer(), **key})
        again = await client.post(url, json={"content": "hi"}, headers={**bearer(), **key})
        other_user = await client.post(
            f"/api/sessions/{await new_session(client, 'bob')}/messages",
            json={"content": "hi"},
            headers={**bearer("bob"), **key},
        )
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert other_user.json()["id"] != first.json()["id"]
    assert [p.msg_id for p in bus.published] == [first.json()["id"], other_user.json()["id"]]


async def test_idempotent_repeat_of_a_finished_job_answers_200() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        url = f"/api/sessions/{sid}/messages"
        headers = {**bearer(), "Idempotency-Key": "k-2"}
        first = await client.post(url, json={"content": "hi"}, headers=headers)
        complete(bus, uuid.UUID(first.json()["id"]))
        again = await client.post(url, json={"content": "hi"}, headers=headers)
    assert again.status_code == 200
    assert again.json()["status"] == "completed"
    assert again.json()["reply"]["content"] == "hello!"
    assert "user_id" not in again.json()["reply"]
    assert len(bus.published) == 1


async def test_wait_returns_200_once_the_job_ends() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)

        async def agent() -> None:
            published = await bus.next_publication()
            assert isinstance(published.body, RequestChat)
            complete(bus, published.body.job_id)

        worker = asyncio.create_task(agent())
        response = await client.post(
            f"/api/sessions/{sid}/messages?wait=30", json={"content": "hi"}, headers=bearer()
        )
        await worker
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert response.headers["location"] == f"/api/jobs/{response.json()['id']}"


async def test_wait_that_runs_out_answers_202() -> None:
    async with gateway_client(max_wait_seconds=0.2) as (client, _):
        sid = await new_session(client)
        response = await client.post(
            f"/api/sessions/{sid}/messages?wait=60", json={"content": "hi"}, headers=bearer()
        )
    assert response.status_code == 202
    assert response.json()["status"] == "queued"


async def test_history_down_while_appending_fails_the_job_with_503() -> None:
    bus = FakeBus(failures={subjects.HISTORY_MESSAGE_APPEND: BusTimeout("no answer")})
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        response = await client.post(
            f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
        )
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert bus.published == []
    [(state, _)] = bus.jobs.values()
    assert state.status == "failed" and state.error is not None
    assert state.error.code == "unavailable"


async def test_publish_failure_fails_the_job_with_503() -> None:
    bus = FakeBus(failures={subjects.CHAT_REQUESTED: BusUnavailable("no stream")})
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        response = await client.post(
            f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
        )
        [(state, _)] = bus.jobs.values()
        polled = await client.get(f"/api/jobs/{state.id}", headers=bearer())
    assert response.status_code == 503
    assert state.status == "failed" and state.finished_at is not None
    assert polled.json()["error"]["code"] == "unavailable"


async def test_readyz_names_what_is_down() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        partial = await client.get("/readyz")
        for subject in (subjects.AGENT_PING, subjects.MEMORY_PING):
            bus.extra[subject] = pong
        ready = await client.get("/readyz")
        bus.connected = False
        disconnected = await client.get("/readyz")
    assert partial.status_code == 503 and partial.headers["retry-after"]
    assert partial.json()["nats"] == "ok" and partial.json()["history"] == "ok"
    assert partial.json()["agent"].startswith("down")
    assert partial.json()["memory"].startswith("down")
    assert ready.status_code == 200
    assert ready.json() == {"nats": "ok", "history": "ok", "agent": "ok", "memory": "ok"}
    assert disconnected.status_code == 503 and disconnected.json()["nats"] == "down"


async def test_openapi_documents_problem_responses() -> None:
    async with gateway_client() as (client, _):
        spec = (await client.get("/openapi.json")).json()
    post = spec["paths"]["/api/sessions/{session_id}/messages"]["post"]
    documented = post["responses"].keys()
    assert {"200", "202", "401", "404", "409", "413", "422", "503", "504"} <= documented
    assert set(post["responses"]["413"]["content"]) == {"application/problem+json"}
    assert "Problem" in spec["components"]["schemas"]


def pong(_: object) -> Pong:
    """Answer a ping as any service would."""
    return Pong(service="test", instance="t")


def complete(bus: FakeBus, job_id: uuid.UUID) -> None:
    """Finish a job in the bucket as the agent would."""
    state, _ = bus.jobs[job_id]
    reply = MessageRecord(
        id=uuid.uuid4(),
        session_id=state.session_id,
        user_id=state.user_id,
        role="assistant",
        content="hello!",
        created_at=utcnow(),
        job_id=job_id,
    )
    bus.set_job(
        JobState.model_validate(
            {
                **state.model_dump(),
                "status": "completed",
                "reply": reply,
                "attempts": 1,
                "finished_at": utcnow(),
            }
        )
    )
