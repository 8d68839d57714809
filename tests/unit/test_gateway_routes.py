"""Sessions, messages, jobs and readiness through the gateway over an in-memory bus."""

import asyncio
import time
import uuid
from typing import Any

import httpx

from contracts import subjects
from contracts.base import Pong
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


async def test_post_message_creates_the_job_and_history_stores_and_queues_it() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        bus.ops.clear()
        response = await client.post(
            f"/api/sessions/{sid}/messages",
            json={"content": "what is NATS?"},
            headers={**bearer(), "X-Request-ID": "post-1"},
        )
        ops = list(bus.ops)
        messages = (await client.get(f"/api/sessions/{sid}/messages", headers=bearer())).json()
        polled = await client.get(response.headers["location"], headers=bearer())
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempts"] == 0 and job["reply"] is None
    assert polled.json() == job
    # Two round trips: the job record, and history's append that admits the message.
    assert ops == ["create_job", subjects.HISTORY_MESSAGE_APPEND]
    [message] = messages["items"]
    assert message["role"] == "user" and message["job_id"] == job["id"]
    [requested] = bus.history.requested  # announced by history's outbox, not the gateway
    assert str(requested.job_id) == job["id"]
    assert str(requested.message_id) == message["id"]
    assert requested.content == "what is NATS?" and requested.persona == "default"
    assert requested.revision == bus.revisions[requested.job_id]
    assert requested.follows is None
    assert requested.created_at == bus.jobs[requested.job_id].created_at


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
    assert [subject for subject, _ in bus.calls] == [subjects.HISTORY_MESSAGE_APPEND]
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
    assert bus.jobs == {} and bus.history.requested == []


async def test_message_to_archived_or_missing_session_leaves_no_job() -> None:
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
    # Each job record was created, refused by history, and deleted again.
    assert bus.ops.count("create_job") == 2 and bus.ops.count("delete_job") == 2
    assert bus.jobs == {} and bus.history.requested == []


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
    announced = [str(r.job_id) for r in bus.history.requested]
    assert announced == [first.json()["id"], other_user.json()["id"]]
    assert len(bus.history.messages[uuid.UUID(sid)]) == 1


async def test_idempotent_repeat_of_a_finished_job_answers_200() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        url = f"/api/sessions/{sid}/messages"
        headers = {**bearer(), "Idempotency-Key": "k-2"}
        first = await client.post(url, json={"content": "hi"}, headers=headers)
        bus.finish(uuid.UUID(first.json()["id"]))
        bus.calls.clear()
        again = await client.post(url, json={"content": "hi"}, headers=headers)
    assert again.status_code == 200
    assert again.json()["status"] == "completed"
    assert again.json()["reply"]["content"] == "hello!"
    assert "user_id" not in again.json()["reply"]
    assert bus.calls == []  # an ended job is not sent to history again
    assert len(bus.history.requested) == 1


async def test_wait_returns_200_once_the_job_ends() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)

        async def agent() -> None:
            requested = await bus.history.next_request()
            bus.start(requested.job_id)
            bus.finish(requested.job_id)

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


async def test_history_silent_while_appending_answers_504_and_a_repeat_admits_the_job() -> None:
    bus = FakeBus(failures={subjects.HISTORY_MESSAGE_APPEND: BusTimeout("no answer")})
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        url = f"/api/sessions/{sid}/messages"
        headers = {**bearer(), "Idempotency-Key": "k-3"}
        silent = await client.post(url, json={"content": "hi"}, headers=headers)
        # History may have stored the message: the record stays, for it or for a repeat.
        [state] = bus.jobs.values()
        del bus.failures[subjects.HISTORY_MESSAGE_APPEND]
        again = await client.post(url, json={"content": "hi"}, headers=headers)
    assert silent.status_code == 504
    assert state.status == "queued" and state.attempts == 0
    assert again.status_code == 202 and again.json()["id"] == str(state.id)
    [requested] = bus.history.requested
    assert requested.job_id == state.id
    assert requested.revision == 0  # the repeat does not know the revision: the agent reads it


async def test_history_unreachable_while_appending_answers_503_and_leaves_no_job() -> None:
    bus = FakeBus(failures={subjects.HISTORY_MESSAGE_APPEND: BusUnavailable("no responders")})
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        response = await client.post(
            f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
        )
    assert response.status_code == 503 and response.headers["retry-after"]
    assert bus.jobs == {}


async def test_job_bucket_down_answers_503_before_history_is_asked() -> None:
    bus = FakeBus(failures={"create_job": BusUnavailable("bucket gone")})
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        bus.calls.clear()
        response = await client.post(
            f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
        )
    assert response.status_code == 503 and response.headers["retry-after"]
    assert bus.calls == [] and bus.history.messages[uuid.UUID(sid)] == []


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
    assert {"200", "202", "401", "404", "409", "413", "422", "429", "503", "504"} <= documented
    assert set(post["responses"]["413"]["content"]) == {"application/problem+json"}
    assert "Problem" in spec["components"]["schemas"]


def pong(_: object) -> Pong:
    """Answer a ping as any service would."""
    return Pong(service="test", instance="t")
