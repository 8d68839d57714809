"""Lanes, backpressure, multitask, cancel and leases through the gateway over an in-memory bus."""

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx

from contracts import subjects
from contracts.base import utcnow
from contracts.chat import CancelJob, JobState
from services.runtime.meta import BusUnavailable
from tests.unit.test_gateway_fakes import FakeBus, bearer, gateway_client


async def new_session(client: httpx.AsyncClient, user: str = "alice") -> str:
    response = await client.post("/api/sessions", json={}, headers=bearer(user))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def post(
    client: httpx.AsyncClient, sid: str, query: str = "", user: str = "alice", **headers: str
) -> httpx.Response:
    return await client.post(
        f"/api/sessions/{sid}/messages{query}",
        json={"content": "hi"},
        headers={**bearer(user), **headers},
    )


def job_of(bus: FakeBus, response: httpx.Response) -> JobState:
    return bus.jobs[uuid.UUID(response.json()["id"])][0]


def move(bus: FakeBus, job_id: uuid.UUID, **update: Any) -> JobState:
    """Write a job's state as the agent would."""
    state = bus.jobs[job_id][0].model_copy(update=update)
    bus.set_job(state)
    return state


def run(bus: FakeBus, job_id: uuid.UUID, lease_seconds: float = 30) -> JobState:
    return move(
        bus,
        job_id,
        status="running",
        attempts=1,
        started_at=utcnow(),
        lease_expires_at=utcnow() + timedelta(seconds=lease_seconds),
    )


async def test_jobs_join_the_user_and_session_lanes_in_order() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        ids = [uuid.UUID((await post(client, sid)).json()["id"]) for _ in range(3)]
    assert bus.lane(subjects.session_lane(sid)) == tuple(ids)
    assert bus.lane(subjects.user_lane("alice")) == tuple(ids)


async def test_limit_answers_429_with_retry_after_and_queues_nothing() -> None:
    bus = FakeBus()
    async with gateway_client(bus, max_active_jobs_per_user=2, retry_after_seconds=7) as (
        client,
        _,
    ):
        sid = await new_session(client)
        first, second = await post(client, sid), await post(client, sid)
        refused = await post(client, sid, **{"Idempotency-Key": "k"})
        other_user = await post(client, await new_session(client, "bob"), user="bob")
        # A job that ended without leaving its lane (its worker crashed) is pruned.
        move(bus, job_of(bus, first).id, status="completed", finished_at=utcnow())
        retried = await post(client, sid, **{"Idempotency-Key": "k"})
    assert first.status_code == second.status_code == 202
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "7"
    assert refused.headers["content-type"] == "application/problem+json"
    assert other_user.status_code == 202
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    published = [p.msg_id for p in bus.published]
    assert published == [first.json()["id"], second.json()["id"], other_user.json()["id"],
                         retried.json()["id"]]
    assert len(bus.history.messages[uuid.UUID(sid)]) == 3
    assert bus.lane(subjects.user_lane("alice")) == (
        job_of(bus, second).id,
        job_of(bus, retried).id,
    )


async def test_reject_answers_409_while_the_session_is_busy() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        first = await post(client, sid)
        refused = await post(client, sid, "?multitask=reject")
        move(bus, job_of(bus, first).id, status="failed", finished_at=utcnow())
        accepted = await post(client, sid, "?multitask=reject")
    assert refused.status_code == 409
    assert [p.msg_id for p in bus.published] == [first.json()["id"], accepted.json()["id"]]
    assert len(bus.jobs) == 2  # the refused job was discarded
    # The session lane was pruned of the failed job; the user lane is pruned only when full.
    assert bus.lane(subjects.session_lane(sid)) == (job_of(bus, accepted).id,)
    user_lane = bus.lane(subjects.user_lane("alice"))
    assert user_lane == (job_of(bus, first).id, job_of(bus, accepted).id)
    assert len(bus.history.messages[uuid.UUID(sid)]) == 2


async def test_interrupt_cancels_the_sessions_jobs_and_queues_the_new_one() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        running = job_of(bus, await post(client, sid))
        waiting = job_of(bus, await post(client, sid))
        run(bus, running.id)
        new = await post(client, sid, "?multitask=interrupt")
    assert new.status_code == 202 and new.json()["status"] == "queued"
    assert bus.jobs[running.id][0].status == "running"  # only the agent ends a running job
    assert bus.jobs[running.id][0].cancel_requested
    assert bus.jobs[waiting.id][0].status == "cancelled"
    cancels = [p for p in bus.published if p.subject == subjects.CHAT_CANCEL]
    assert [p.body for p in cancels] == [CancelJob(job_id=running.id, user_id="alice")]
    assert cancels[0].stream is None  # core NATS: every agent replica hears it
    new_id = uuid.UUID(new.json()["id"])
    assert bus.lane(subjects.session_lane(sid)) == (running.id, new_id)
    assert bus.lane(subjects.user_lane("alice")) == (running.id, new_id)
    assert bus.published[-1].msg_id == str(new_id)


async def test_unknown_multitask_answers_422() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        response = await post(client, sid, "?multitask=replace")
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "multitask"]
    assert bus.published == [] and bus.jobs == {}


async def test_multitask_is_documented() -> None:
    async with gateway_client() as (client, _):
        spec = (await client.get("/openapi.json")).json()
    params = spec["paths"]["/api/sessions/{session_id}/messages"]["post"]["parameters"]
    [multitask] = [p for p in params if p["name"] == "multitask"]
    assert "interrupt" in multitask["description"]
    assert "429" in spec["paths"]["/api/sessions/{session_id}/messages"]["post"]["responses"]
    assert "/api/jobs/{job_id}/cancel" in spec["paths"]
    assert "text/event-stream" in str(spec["paths"]["/api/jobs/{job_id}/events"])


async def test_cancel_a_queued_job_empties_its_lanes() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        job = (await post(client, sid)).json()
        cancelled = await client.post(f"/api/jobs/{job['id']}/cancel", headers=bearer())
        again = await client.post(f"/api/jobs/{job['id']}/cancel", headers=bearer())
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    assert again.status_code == 409
    assert bus.lane(subjects.session_lane(sid)) == ()
    assert bus.lane(subjects.user_lane("alice")) == ()
    assert not [p for p in bus.published if p.subject == subjects.CHAT_CANCEL]


async def test_cancel_of_a_finished_missing_or_foreign_job() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid))
        foreign = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer("mallory"))
        missing = await client.post(f"/api/jobs/{uuid.uuid4()}/cancel", headers=bearer())
        move(bus, job.id, status="completed", finished_at=utcnow())
        finished = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
    assert foreign.status_code == missing.status_code == 404
    assert finished.status_code == 409
    assert bus.jobs[job.id][0].status == "completed"


async def test_cancel_a_running_job_waits_for_the_agent() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid))
        run(bus, job.id)

        async def agent() -> None:
            await bus.published_on(subjects.CHAT_CANCEL)
            assert bus.jobs[job.id][0].cancel_requested
            move(bus, job.id, status="cancelled", finished_at=utcnow(), lease_expires_at=None)

        worker = asyncio.create_task(agent())
        response = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
        await asyncio.wait_for(worker, 10)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"


async def test_cancel_answers_the_running_state_when_the_agent_is_slow() -> None:
    bus = FakeBus()
    async with gateway_client(bus, cancel_wait_seconds=0.05) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid))
        run(bus, job.id)
        response = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
    assert response.status_code == 202
    assert response.json()["status"] == "running"
    assert bus.jobs[job.id][0].cancel_requested


async def test_running_job_with_an_expired_lease_is_served_as_queued() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid))
        run(bus, job.id, lease_seconds=-1)
        polled = await client.get(f"/api/jobs/{job.id}", headers=bearer())
    assert polled.status_code == 200
    assert polled.json()["status"] == "queued" and polled.json()["attempts"] == 1
    stored = bus.jobs[job.id][0]
    assert stored.status == "queued" and stored.lease_expires_at is None


async def test_cancel_of_a_job_whose_worker_died_cancels_it_as_queued() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid))
        run(bus, job.id, lease_seconds=-1)
        response = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
    assert response.json()["status"] == "cancelled"
    assert bus.lane(subjects.session_lane(sid)) == ()


async def test_lanes_down_answers_503_and_fails_the_job() -> None:
    bus = FakeBus(failures={"lanes": BusUnavailable("lanes bucket gone")})
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        response = await post(client, sid)
    assert response.status_code == 503 and response.headers["retry-after"]
    assert bus.published == []
    [(state, _)] = bus.jobs.values()
    assert state.status == "failed"


async def test_failure_after_the_lanes_fails_the_job_and_leaves_the_lanes() -> None:
    bus = FakeBus(failures={subjects.CHAT_REQUESTED: BusUnavailable("no stream")})
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        response = await post(client, sid)
    assert response.status_code == 503 and response.headers["retry-after"]
    [(state, _)] = bus.jobs.values()
    assert state.status == "failed"
    assert bus.lane(subjects.session_lane(sid)) == ()
    assert bus.lane(subjects.user_lane("alice")) == ()


async def test_idempotent_repeat_leaves_the_lanes_alone() -> None:
    bus = FakeBus()
    async with gateway_client(bus, max_active_jobs_per_user=1) as (client, _):
        sid = await new_session(client)
        first = await post(client, sid, **{"Idempotency-Key": "same"})
        again = await post(client, sid, "?multitask=reject", **{"Idempotency-Key": "same"})
    assert again.status_code == 202 and again.json() == first.json()
    assert bus.lane(subjects.user_lane("alice")) == (job_of(bus, first).id,)
