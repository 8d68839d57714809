"""Admission (limits, order, multitask), idempotency and cancel, over an in-memory bus.

The gateway creates a job's record and asks history to admit the message; history
decides limits, the job the new one follows and multitask in that append. A refused
message leaves nothing behind. A cancel is a request in the cancel bucket, which the
agent carries out.
"""

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from contracts import subjects
from contracts.base import BusError, utcnow
from contracts.chat import CancelRequest, JobState
from contracts.history import Admission, AppendMessage, MessageReply
from services.gateway.errors import Conflict, NotFound, TooManyRequests
from services.gateway.jobs import Jobs
from services.gateway.service import Caller, GatewayService
from tests.unit.test_gateway_fakes import JOBS_RETRY_AFTER, FakeBus, bearer, gateway_client

WAIT = 10.0


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
    assert response.status_code in (200, 202), response.text
    return bus.jobs[uuid.UUID(response.json()["id"])]


# ---- admission ------------------------------------------------------------------------------


async def test_the_append_carries_what_history_admits_the_job_by() -> None:
    bus = FakeBus()
    seen: list[AppendMessage] = []

    def append(command: AppendMessage) -> MessageReply:
        seen.append(command)
        return bus.history.append_message(command)

    bus.extra[subjects.HISTORY_MESSAGE_APPEND] = append
    limits = {"max_active_jobs_per_user": 5, "max_messages_per_minute": 7}
    async with gateway_client(bus, **limits) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid, "?multitask=interrupt"))
    [command] = seen
    assert (command.user_id, command.session_id, command.job_id, command.role) == (
        "alice", uuid.UUID(sid), job.id, "user",
    )
    assert command.admission == Admission(
        revision=bus.revisions[job.id], created_at=job.created_at, multitask="interrupt",
        max_active_jobs=5, max_messages_per_minute=7,
    )


async def test_too_many_jobs_answers_429_with_retry_after_and_leaves_nothing() -> None:
    bus = FakeBus()
    async with gateway_client(bus, max_active_jobs_per_user=2) as (client, _):
        sid = await new_session(client)
        first, second = await post(client, sid), await post(client, sid)
        refused = await post(client, sid, **{"Idempotency-Key": "k"})
        other_user = await post(client, await new_session(client, "bob"), user="bob")
        bus.finish(job_of(bus, first).id)
        retried = await post(client, sid, **{"Idempotency-Key": "k"})
    assert first.status_code == second.status_code == 202
    assert refused.status_code == 429
    # When a job ends nobody knows: the configured RETRY_AFTER_SECONDS, not history's guess.
    assert refused.headers["retry-after"] == "2"
    assert JOBS_RETRY_AFTER == 2.5
    assert refused.headers["content-type"] == "application/problem+json"
    assert other_user.status_code == 202
    # The refused record was deleted, so the same key is free once a job has ended.
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    announced = [str(r.job_id) for r in bus.history.requested]
    assert announced == [first.json()["id"], second.json()["id"], other_user.json()["id"],
                         retried.json()["id"]]
    assert len(bus.history.messages[uuid.UUID(sid)]) == 4  # three user messages, one reply


async def test_messages_over_the_minute_answer_429_with_the_time_left() -> None:
    bus = FakeBus()
    async with gateway_client(bus, max_messages_per_minute=2) as (client, _):
        sid = await new_session(client)
        accepted = [await post(client, sid), await post(client, sid)]
        refused = await post(client, sid)
    assert [r.status_code for r in accepted] == [202, 202]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    assert len(bus.jobs) == 2


async def test_reject_answers_409_while_the_session_is_busy() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        first = await post(client, sid)
        refused = await post(client, sid, "?multitask=reject")
        bus.finish(job_of(bus, first).id, "failed")
        accepted = await post(client, sid, "?multitask=reject")
    assert refused.status_code == 409
    assert accepted.status_code == 202
    assert [str(r.job_id) for r in bus.history.requested] == [
        first.json()["id"], accepted.json()["id"],
    ]
    assert len(bus.jobs) == 2  # the refused job was discarded


async def test_interrupt_asks_to_cancel_the_sessions_jobs_and_queues_the_new_one() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        running = job_of(bus, await post(client, sid))
        waiting = job_of(bus, await post(client, sid))
        other = job_of(bus, await post(client, await new_session(client, "bob"), user="bob"))
        bus.start(running.id)
        new = await post(client, sid, "?multitask=interrupt")
    assert new.status_code == 202 and new.json()["status"] == "queued"
    assert set(bus.cancels) == {running.id, waiting.id}
    assert {c.user_id for c in bus.cancels.values()} == {"alice"}
    # Only the agent moves a job: the gateway asked, and the states are as they were.
    assert bus.jobs[running.id].status == "running"
    assert bus.jobs[waiting.id].status == "queued"
    assert other.id not in bus.cancels
    assert str(bus.history.requested[-1].job_id) == new.json()["id"]


async def test_unknown_multitask_answers_422() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        response = await post(client, sid, "?multitask=replace")
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "multitask"]
    assert bus.jobs == {} and bus.history.requested == []


async def test_multitask_is_documented() -> None:
    async with gateway_client() as (client, _):
        spec = (await client.get("/openapi.json")).json()
    params = spec["paths"]["/api/sessions/{session_id}/messages"]["post"]["parameters"]
    [multitask] = [p for p in params if p["name"] == "multitask"]
    assert "interrupt" in multitask["description"]
    assert "429" in spec["paths"]["/api/sessions/{session_id}/messages"]["post"]["responses"]
    assert "/api/jobs/{job_id}/cancel" in spec["paths"]
    assert "text/event-stream" in str(spec["paths"]["/api/jobs/{job_id}/events"])


# ---- submit_message, without HTTP ---------------------------------------------------------------


def service(bus: FakeBus, **limits: Any) -> GatewayService:
    return GatewayService(bus, timeout=2.0, max_content_bytes=1000, cancel_wait=0.05, **limits)


ALICE = Caller("alice", "req-1")


async def session_of(bus: FakeBus, persona: str = "p") -> uuid.UUID:
    return (await service(bus).create_session(Caller("alice", "req-0"), persona, None)).id


async def test_submit_creates_the_record_then_asks_history_to_admit_the_message() -> None:
    bus = FakeBus()
    sid = await session_of(bus)
    bus.ops.clear()
    submission = await service(bus, max_active_jobs=3, max_messages_per_minute=9).submit_message(
        ALICE, sid, "hi", None, "interrupt"
    )
    assert submission.created and submission.job.status == "queued"
    assert bus.ops == ["create_job", subjects.HISTORY_MESSAGE_APPEND]
    [requested] = bus.history.requested
    assert (requested.job_id, requested.revision) == (
        submission.job.id, bus.revisions[submission.job.id],
    )


@pytest.mark.parametrize(
    ("code", "error"),
    [("not_found", NotFound), ("conflict", Conflict), ("too_many_jobs", TooManyRequests),
     ("rate_limited", TooManyRequests)],
)
async def test_a_refused_append_deletes_the_record_and_raises(
    code: Any, error: type[Exception]
) -> None:
    def refuse(_: object) -> MessageReply:
        return MessageReply(error=BusError(code=code, message="refused", retry_after=4.0))

    bus = FakeBus(extra={subjects.HISTORY_MESSAGE_APPEND: refuse})
    sid = await session_of(bus)
    with pytest.raises(error) as raised:
        await service(bus).submit_message(ALICE, sid, "hi", "key")
    assert bus.jobs == {}
    assert bus.ops[-2:] == [subjects.HISTORY_MESSAGE_APPEND, "delete_job"]
    if isinstance(raised.value, TooManyRequests):  # the job limit's comes from the settings
        assert raised.value.retry_after == (4.0 if code == "rate_limited" else None)


async def test_a_repeated_key_returns_the_job_and_sends_the_append_again_while_queued() -> None:
    bus = FakeBus()
    sid = await session_of(bus)
    gateway = service(bus)
    first = await gateway.submit_message(ALICE, sid, "hi", "same")
    again = await gateway.submit_message(ALICE, sid, "hi", "same")
    bus.start(first.job.id)
    started = await gateway.submit_message(ALICE, sid, "hi", "same")

    assert not again.created and again.job == first.job
    assert started.job.status == "running" and started.job.attempts == 1
    appends = [op for op in bus.ops if op == subjects.HISTORY_MESSAGE_APPEND]
    assert len(appends) == 2  # sent again while queued with no attempt; not once started
    assert len(bus.history.requested) == 1  # history admitted the message once
    assert len(bus.history.messages[sid]) == 1


async def test_a_repeated_key_for_another_session_is_a_conflict() -> None:
    bus = FakeBus()
    sid, other = await session_of(bus), await session_of(bus, "q")
    await service(bus).submit_message(ALICE, sid, "hi", "same")
    with pytest.raises(Conflict, match="another session"):
        await service(bus).submit_message(ALICE, other, "hi", "same")


async def test_content_over_the_limit_is_refused_before_any_round_trip() -> None:
    bus = FakeBus()
    sid = await session_of(bus)
    bus.ops.clear()
    with pytest.raises(Exception, match="over 1000 bytes"):
        await service(bus).submit_message(ALICE, sid, "é" * 501, None)
    assert bus.ops == []


# ---- cancel -----------------------------------------------------------------------------------


async def test_cancel_writes_a_request_and_answers_the_state_the_agent_ended_it_in() -> None:
    bus = FakeBus()
    async with gateway_client(bus, cancel_wait_seconds=WAIT) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid))
        bus.start(job.id)

        async def agent() -> None:
            await bus.cancel_requested(job.id)
            bus.finish(job.id, "cancelled")

        worker = asyncio.create_task(agent())
        before = utcnow()
        response = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
        await asyncio.wait_for(worker, WAIT)
        again = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    request = bus.cancels[job.id]
    assert (request.job_id, request.user_id) == (job.id, "alice")
    assert before <= request.requested_at <= utcnow()
    assert again.status_code == 409


async def test_cancel_answers_the_current_state_when_the_agent_is_slow() -> None:
    bus = FakeBus()
    async with gateway_client(bus, cancel_wait_seconds=0.05) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid))
        response = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert job.id in bus.cancels
    assert bus.jobs[job.id].status == "queued"  # the gateway never writes the record again


async def test_cancel_of_a_finished_missing_or_foreign_job() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        job = job_of(bus, await post(client, sid))
        foreign = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer("mallory"))
        missing = await client.post(f"/api/jobs/{uuid.uuid4()}/cancel", headers=bearer())
        bus.finish(job.id)
        finished = await client.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
    assert foreign.status_code == missing.status_code == 404
    assert finished.status_code == 409
    assert finished.headers["content-type"] == "application/problem+json"
    assert bus.cancels == {}
    assert bus.jobs[job.id].status == "completed"


async def test_jobs_cancel_waits_for_the_end_and_asks_nothing_of_an_ended_job() -> None:
    bus = FakeBus()
    sid = await session_of(bus)
    job = (await service(bus).submit_message(ALICE, sid, "hi", None)).job
    jobs = Jobs(bus, cancel_wait=WAIT)

    async def agent() -> None:
        await bus.cancel_requested(job.id)
        await asyncio.sleep(0.02)
        bus.finish(job.id, "cancelled")

    worker = asyncio.create_task(agent())
    ended = await jobs.cancel("alice", job.id)
    await worker

    assert ended.status == "cancelled"
    assert bus.cancels[job.id] == CancelRequest(
        job_id=job.id, user_id="alice", requested_at=bus.cancels[job.id].requested_at
    )
    assert utcnow() - bus.cancels[job.id].requested_at < timedelta(seconds=WAIT)
    bus.cancels.clear()
    with pytest.raises(Conflict, match="already ended: cancelled"):
        await jobs.cancel("alice", job.id)
    with pytest.raises(NotFound):
        await jobs.cancel("mallory", job.id)
    assert bus.cancels == {}
