"""Server-sent events of a job, replayed from its stored events, over an in-memory bus."""

import uuid

import httpx
import pytest

from contracts.chat import JobState
from services.gateway import events
from services.gateway.events import JobEvent, JobEvents, parse_event_id
from services.runtime.meta import BusUnavailable
from tests.unit.test_gateway_fakes import FakeBus, bearer, gateway_client
from tests.unit.test_gateway_sseclient import SseEvent, sse


async def queued_job(client: httpx.AsyncClient, bus: FakeBus) -> JobState:
    sid = (await client.post("/api/sessions", json={}, headers=bearer())).json()["id"]
    response = await client.post(
        f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
    )
    assert response.status_code == 202, response.text
    return bus.jobs[uuid.UUID(response.json()["id"])]


def names(events: list[SseEvent | None]) -> list[tuple[str | None, str | None]]:
    return [(e.event, e.id) for e in events if e is not None]


async def test_fresh_stream_sends_the_state_then_the_attempt_so_far_then_live_events() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        bus.start(job.id)
        hel = bus.delta(job.id, "Hel")
        bus.emit(uuid.uuid4(), "delta", b"{}")  # another job's event: positions are the stream's
        lo = bus.delta(job.id, "lo")
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            assert stream.status == 200
            assert stream.response_headers["content-type"].startswith("text/event-stream")
            first = [await stream.next() for _ in range(3)]
            bang = bus.delta(job.id, "!")
            bus.tool(job.id, "recall_memories", "{}", "- likes tea")
            final = bus.finish(job.id, text="Hello!")
            rest = await stream.rest()
    assert names(first) == [("status", "0"), ("delta", str(hel)), ("delta", str(lo))]
    assert first[0] is not None and first[0].json()["status"] == "running"
    assert first[0].json()["attempts"] == 1  # the stored running status is not sent twice
    assert names(rest) == [
        ("delta", str(bang)),
        ("tool_call", str(bang + 1)),
        ("tool_result", str(bang + 2)),
        ("completed", str(bang + 3)),
    ]
    texts = [e.json()["text"] for e in [*first, *rest] if e is not None and e.event == "delta"]
    assert "".join(texts) == "Hello!"
    assert final.reply is not None
    assert rest[-1].json()["reply"]["content"] == final.reply.content == "Hello!"
    assert bus.feeds_open == 0


async def test_earlier_attempts_are_left_out_of_a_fresh_stream() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        bus.start(job.id)
        bus.delta(job.id, "lost")
        bus.requeue(job.id)
        bus.start(job.id)
        kept = bus.delta(job.id, "kept")
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            first = [await stream.next() for _ in range(2)]
            bus.finish(job.id, text="kept")
            rest = await stream.rest()
    events_ = [*first, *rest]
    assert names(events_) == [("status", "0"), ("delta", str(kept)), ("completed", str(kept + 1))]
    assert first[0] is not None and first[0].json()["attempts"] == 2


async def test_resume_replays_exactly_the_events_after_the_last_event_id() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        bus.start(job.id)
        seen = bus.delta(job.id, "a")
        b = bus.delta(job.id, "b")
        bus.requeue(job.id)
        bus.start(job.id)
        bus.delta(job.id, "c")
        bus.finish(job.id, text="c")
        headers = {**bearer(), "Last-Event-ID": str(seen)}
        async with sse(app, f"/api/jobs/{job.id}/events", headers) as stream:
            resumed = await stream.rest()
    assert names(resumed) == [
        ("delta", str(b)),
        ("status", str(b + 1)),
        ("status", str(b + 2)),
        ("delta", str(b + 3)),
        ("completed", str(b + 4)),
    ]
    assert [e.json().get("status") for e in resumed[1:3]] == ["queued", "running"]
    assert resumed[2].json()["attempts"] == 2


async def test_a_last_event_id_that_is_no_position_starts_a_fresh_stream() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        bus.finish(job.id, "failed")
        headers = {**bearer(), "Last-Event-ID": "d1.4"}  # an id of the old scheme
        async with sse(app, f"/api/jobs/{job.id}/events", headers) as stream:
            events_ = await stream.rest()
    assert names(events_) == [("failed", "0")]


@pytest.mark.parametrize(
    ("header", "position"),
    [(None, None), ("12", 12), (" 7 ", 7), ("0", 0), ("d1.4", None), ("-1", None),
     ("1" * 19, None), ("", None)],
)
def test_event_ids_are_stream_positions(header: str | None, position: int | None) -> None:
    assert parse_event_id(header) == position


async def test_stream_opened_after_the_end_sends_the_final_event_at_once() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        bus.finish(job.id, "cancelled")
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            events_ = await stream.rest()
    assert names(events_) == [("cancelled", "0")]
    assert events_[0].json()["status"] == "cancelled"
    assert bus.feeds_opened == 0


async def test_tool_events_carry_what_the_client_needs_and_no_internals() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        bus.start(job.id)
        bus.tool(job.id, "search_history", '{"query": "tea"}', "no messages found")
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            first = [await stream.next() for _ in range(3)]
            bus.finish(job.id)
            events_ = [e for e in first if e is not None] + await stream.rest()
    assert [e.event for e in events_] == ["status", "tool_call", "tool_result", "completed"]
    call, result = (e.json() for e in events_[1:3])
    assert set(call) == {"call_id", "name", "arguments"}
    assert (call["name"], call["arguments"]) == ("search_history", '{"query": "tea"}')
    assert result == {
        "call_id": call["call_id"], "name": "search_history", "result": "no messages found",
        "truncated": False,
    }


async def test_a_repeated_status_and_unreadable_events_are_skipped() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            assert names([await stream.next()]) == [("status", "0")]
            running = bus.start(job.id)
            bus.emit(job.id, "status", running)  # published again by a retried publish
            bus.emit(job.id, "delta", b"{not json")
            bus.emit(job.id, "mystery", b"{}")
            final = bus.finish(job.id)
            rest = await stream.rest()
    assert [e.event for e in rest] == ["status", "completed"]
    assert rest[0].json()["status"] == "running"
    assert rest[-1].id == str(bus.seq) and final.status == "completed"


async def collect(stream: JobEvents) -> list[JobEvent]:
    return [event async for event in stream.stream()]


async def test_final_state_comes_from_the_bucket_when_no_final_event_arrives() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        job = await queued_job(client, bus)
    running = bus.start(job.id)
    seen = bus.delta(job.id, "par")
    bus.finish(job.id, "failed", event=False)  # its final event not stored (yet)

    got = await collect(JobEvents(bus, running, None, resync=0.05))

    assert [(e.name, e.id) for e in got] == [("status", "0"), ("delta", str(seen)),
                                             ("failed", str(seen))]
    assert got[-1].job is not None and got[-1].job.error is not None


async def test_a_resumed_stream_of_an_ended_job_whose_events_expired_gets_the_bucket_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events, "ENDED_PATIENCE", 0.05)
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        job = await queued_job(client, bus)
    ended = bus.finish(job.id, event=False)

    got = await collect(JobEvents(bus, ended, "41"))

    assert [(e.name, e.id) for e in got] == [("completed", "41")]
    assert bus.feeds_opened == 1


async def test_a_job_gone_from_the_bucket_ends_its_stream() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        job = await queued_job(client, bus)
    del bus.jobs[job.id]
    got = await collect(JobEvents(bus, job, None, resync=0.05))
    assert [(e.name, e.id) for e in got] == [("status", "0")]
    assert bus.feeds_open == 0


async def test_the_bus_going_away_ends_the_stream_after_the_state() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, app):
        job = await queued_job(client, bus)
        bus.failures["follow_job"] = BusUnavailable("not connected to NATS")
        async with sse(app, f"/api/jobs/{job.id}/events", bearer()) as stream:
            events_ = await stream.rest()
    assert stream.status == 200
    assert names(events_) == [("status", "0")]


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
            await bus.followed()
            assert bus.feeds_open == 1
    assert bus.feeds_open == 0
