"""Server-sent events of a job through the gateway over an in-memory bus."""

import uuid
from datetime import timedelta

import httpx

from contracts.base import utcnow
from contracts.chat import JobState
from contracts.history import MessageRecord
from tests.unit.test_gateway_fakes import FakeBus, bearer, gateway_client
from tests.unit.test_gateway_sseclient import sse


async def queued_job(client: httpx.AsyncClient, bus: FakeBus) -> JobState:
    sid = (await client.post("/api/sessions", json={}, headers=bearer())).json()["id"]
    response = await client.post(
        f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
    )
    assert response.status_code == 202, response.text
    return bus.jobs[uuid.UUID(response.json()["id"])][0]


def running(state: JobState, attempts: int = 1, lease_seconds: float = 30) -> JobState:
    return state.model_copy(
        update={
            "status": "running",
            "attempts": attempts,
            "started_at": utcnow(),
            "lease_expires_at": utcnow() + timedelta(seconds=lease_seconds),
        }
    )


def completed(state: JobState, text: str) -> JobState:
    reply = MessageRecord(
        id=uuid.uuid4(),
        session_id=state.session_id,
        user_id=state.user_id,
        role="assistant",
        content=text,
        created_at=utcnow(),
        job_id=state.id,
    )
    return state.model_copy(
        update={
            "status": "completed",
            "reply": reply,
            "finished_at": utcnow(),
            "lease_expires_at": None,
        }
    )


async def test_full_stream_status_deltas_then_completed() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            assert stream.status == 200
            assert stream.response_headers["content-type"].startswith("text/event-stream")
            first = await stream.next()
            job = running(job)
            bus.set_job(job)
            for seq, text in enumerate(["Hel", "lo", "!"]):
                bus.publish_delta(job.id, seq, text)
            bus.set_job(completed(job, "Hello!"))
            rest = await stream.rest()
    assert first is not None
    assert (first.event, first.id, first.json()["status"]) == ("status", "s1", "queued")
    assert [(e.event, e.id) for e in rest] == [
        ("status", "s2"),
        ("delta", "d1.0"),
        ("delta", "d1.1"),
        ("delta", "d1.2"),
        ("completed", "s3"),
    ]
    assert rest[0].json()["status"] == "running" and rest[0].json()["attempts"] == 1
    assert "".join(e.json()["text"] for e in rest[1:4]) == "Hello!"
    assert rest[-1].json()["reply"]["content"] == "Hello!"
    assert bus.open_feeds() == 0


async def test_stream_opened_after_the_end_sends_the_final_event_at_once() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        bus.set_job(job.model_copy(update={"status": "cancelled", "finished_at": utcnow()}))
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            events = await stream.rest()
    assert [(e.event, e.id) for e in events] == [("cancelled", "s2")]
    assert events[0].json()["status"] == "cancelled"
    assert bus.open_feeds() == 0


async def test_resumed_stream_skips_nothing_new_and_shows_a_retry() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = running(await queued_job(client, bus))
        bus.set_job(job)
        headers = {**bearer(), "Last-Event-ID": "d1.4"}
        async with sse(app, f"/api/jobs/{job.id}/events", headers) as stream:
            first = await stream.next()
            bus.publish_delta(job.id, 5, "more")
            events = [await stream.next()]
            # The worker died; another replica retries: seq restarts before its state arrives.
            bus.publish_delta(job.id, 0, "again")
            events.append(await stream.next())
            retried = running(job, attempts=2)
            bus.set_job(retried)
            bus.publish_delta(job.id, 1, " and on")
            bus.set_job(completed(retried, "again and on"))
            rest = [e for e in events if e is not None] + await stream.rest()
    assert first is not None and first.event == "status" and first.json()["status"] == "running"
    assert [(e.event, e.id) for e in rest] == [
        ("delta", "d1.5"),
        ("delta", "d2.0"),
        ("status", "s3"),
        ("delta", "d2.1"),
        ("completed", "s4"),
    ]
    assert rest[2].json()["attempts"] == 2


async def test_retry_noticed_from_the_state_is_a_status_event() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = running(await queued_job(client, bus))
        bus.set_job(job)
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            await stream.next()
            bus.publish_delta(job.id, 0, "a")
            bus.set_job(running(job, attempts=2))
            bus.publish_delta(job.id, 0, "b")
            bus.set_job(job.model_copy(update={"status": "failed", "finished_at": utcnow()}))
            rest = await stream.rest()
    assert [(e.event, e.id) for e in rest] == [
        ("delta", "d1.0"),
        ("status", "s3"),
        ("delta", "d2.0"),
        ("failed", "s4"),
    ]


async def test_lease_renewals_are_not_status_events() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = running(await queued_job(client, bus))
        bus.set_job(job)
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            await stream.next()
            renewed = utcnow() + timedelta(seconds=60)
            bus.set_job(job.model_copy(update={"lease_expires_at": renewed}))
            bus.set_job(job.model_copy(update={"cancel_requested": True}))
            bus.set_job(job.model_copy(update={"status": "cancelled", "finished_at": utcnow()}))
            rest = await stream.rest()
    assert [(e.event, e.id) for e in rest] == [("cancelled", "s5")]


async def test_expired_lease_is_streamed_as_queued() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = running(await queued_job(client, bus), lease_seconds=-1)
        bus.set_job(job)
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            first = await stream.next()
    assert first is not None and first.json()["status"] == "queued"
    assert bus.jobs[job.id][0].status == "queued"


async def test_foreign_or_missing_job_answers_404_before_streaming() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        async with sse(app, f"/api/jobs/{job.id}/events", bearer("mallory")) as foreign:
            pass
        async with sse(app, f"/api/jobs/{uuid.uuid4()}/events", bearer()) as missing:
            pass
    for stream in (foreign, missing):
        assert stream.status == 404
        assert stream.response_headers["content-type"] == "application/problem+json"
    assert bus.feeds_opened == 0


async def test_client_going_away_closes_the_feed() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            await stream.next()
            assert bus.open_feeds() == 1
    assert bus.open_feeds() == 0
