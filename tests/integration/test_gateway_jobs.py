"""Two gateway replicas on real NATS: events, cancel and the per-user limit across them."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import nats
import pytest
from fastapi import FastAPI
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.base import utcnow
from contracts.chat import CancelJob, ChatDelta, JobLane, JobState
from contracts.history import MessageRecord
from services.gateway.app import create_app
from services.launcher.natsserver import NatsServer
from tests.integration.test_gateway_nats import responders
from tests.unit.test_gateway_fakes import FakeHistory, bearer, make_settings
from tests.unit.test_gateway_sseclient import sse

pytestmark = pytest.mark.integration


@dataclass
class Replica:
    """One gateway app with its HTTP client."""

    app: FastAPI
    http: httpx.AsyncClient


@pytest.fixture
async def replicas(clean_nats: str) -> AsyncIterator[tuple[Replica, Replica]]:
    history = FakeHistory()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(responders(clean_nats, history, list(history.handlers())))
        pair = []
        for name in ("a", "b"):
            app = create_app(make_settings(nats_url=clean_nats, instance=f"gw-{name}"))
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            http = httpx.AsyncClient(transport=transport, base_url="http://gateway")
            await stack.enter_async_context(http)
            pair.append(Replica(app, http))
        yield pair[0], pair[1]


@pytest.fixture
async def nc(clean_nats: str) -> AsyncIterator[Client]:
    conn = await nats.connect(clean_nats)
    yield conn
    await conn.close()


async def post_job(replica: Replica, user: str = "alice") -> JobState:
    """Create a session and post a message through ``replica``; return the queued job."""
    session = await replica.http.post("/api/sessions", json={}, headers=bearer(user))
    sid = session.json()["id"]
    response = await replica.http.post(
        f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer(user)
    )
    assert response.status_code == 202, response.text
    return await read_state(replica, uuid.UUID(response.json()["id"]))


async def read_state(replica: Replica, job_id: uuid.UUID) -> JobState:
    found = await replica.app.state.bus.get_job(job_id)
    assert found is not None
    return found[0]  # type: ignore[no-any-return]


async def write(kv: KeyValue, state: JobState) -> None:
    """Write a job's state as the agent does: compare-and-set on the latest revision."""
    entry = await kv.get(str(state.id))
    await kv.update(str(state.id), state.model_dump_json().encode(), last=entry.revision)


def run(state: JobState) -> JobState:
    lease = utcnow() + timedelta(seconds=30)
    update = {"status": "running", "attempts": 1, "started_at": utcnow(), "lease_expires_at": lease}
    return state.model_copy(update=update)


async def test_events_from_another_replica_carry_deltas_in_order(
    replicas: tuple[Replica, Replica], nc: Client
) -> None:
    accepting, streaming = replicas
    job = await post_job(accepting)
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    async with sse(streaming.app, f"/api/jobs/{job.id}/events", bearer()) as stream:
        first = await stream.next()
        assert first is not None and first.json()["status"] == "queued"
        job = run(job)
        await write(kv, job)
        pieces = [f"piece {i} " for i in range(20)]
        for seq, text in enumerate(pieces):
            delta = ChatDelta(job_id=job.id, seq=seq, text=text)
            await nc.publish(subjects.chat_delta(str(job.id)), delta.model_dump_json().encode())
        await nc.flush()
        reply = MessageRecord(
            id=uuid.uuid4(),
            session_id=job.session_id,
            user_id=job.user_id,
            role="assistant",
            content="".join(pieces),
            created_at=utcnow(),
            job_id=job.id,
        )
        done = job.model_copy(
            update={"status": "completed", "reply": reply, "finished_at": utcnow()}
        )
        await write(kv, done)
        rest = await stream.rest()
    assert rest[0].event == "status" and rest[0].json()["status"] == "running"
    deltas = [e for e in rest if e.event == "delta"]
    assert [e.id for e in deltas] == [f"d1.{seq}" for seq in range(20)]
    assert [e.json()["text"] for e in deltas] == pieces
    assert rest[-1].event == "completed"
    assert rest[-1].json()["reply"]["content"] == "".join(pieces)
    assert [e.event for e in rest].count("completed") == 1


async def test_cancel_of_a_running_job_reaches_the_agent(
    replicas: tuple[Replica, Replica], nc: Client
) -> None:
    accepting, cancelling = replicas
    job = await post_job(accepting)
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    await write(kv, run(job))
    heard: asyncio.Queue[CancelJob] = asyncio.Queue()

    async def agent(msg: Msg) -> None:
        command = CancelJob.model_validate_json(msg.data)
        await heard.put(command)
        entry = await kv.get(str(command.job_id))
        assert entry.value is not None
        state = JobState.model_validate_json(entry.value)
        assert state.cancel_requested
        cancelled = state.model_copy(
            update={"status": "cancelled", "finished_at": utcnow(), "lease_expires_at": None}
        )
        await kv.update(str(state.id), cancelled.model_dump_json().encode(), last=entry.revision)

    sub = await nc.subscribe(subjects.CHAT_CANCEL, cb=agent)
    await nc.flush()
    try:
        response = await cancelling.http.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
    finally:
        await sub.unsubscribe()
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancelled"
    assert heard.get_nowait() == CancelJob(job_id=job.id, user_id="alice")
    again = await accepting.http.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
    assert again.status_code == 409


async def test_per_user_limit_holds_across_replicas(
    replicas: tuple[Replica, Replica], nc: Client
) -> None:
    first, second = replicas
    session = await first.http.post("/api/sessions", json={}, headers=bearer())
    url = f"/api/sessions/{session.json()['id']}/messages"
    posts = [
        replica.http.post(url, json={"content": f"m{i}"}, headers=bearer())
        for i, replica in enumerate([first, second] * 4 + [first])
    ]
    responses = await asyncio.gather(*posts)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 8 + [429], [r.text for r in responses]
    [refused] = [r for r in responses if r.status_code == 429]
    assert refused.headers["retry-after"] == "2"
    lanes = await nc.jetstream().key_value(subjects.LANES_BUCKET)
    entry = await lanes.get(subjects.user_lane("alice"))
    assert entry.value is not None
    assert len(JobLane.model_validate_json(entry.value).jobs) == 8
    jobs = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    assert len(await jobs.keys()) == 8  # the refused job was deleted, not left queued
    stream = await nc.jetstream().stream_info(subjects.CHAT_JOBS_STREAM.name)
    assert stream.state.messages == 8


async def test_lost_bus_answers_503_at_once(tmp_path: Path) -> None:
    try:
        server = NatsServer(tmp_path / "nats")
    except FileNotFoundError:
        pytest.skip("needs the nats-server binary to stop and restart it")
    await asyncio.to_thread(server.start)
    app = create_app(make_settings(nats_url=server.url, bus_request_timeout=1.0))
    history = FakeHistory()
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://gateway") as http,
        ):
            async with responders(server.url, history, list(history.handlers())):
                job = await post_job(Replica(app, http))
            await asyncio.to_thread(server.stop)
            await until(lambda: not app.state.bus.connected)
            polled = await http.get(f"/api/jobs/{job.id}", headers=bearer())
            cancel = await http.post(f"/api/jobs/{job.id}/cancel", headers=bearer())
            events = await http.get(f"/api/jobs/{job.id}/events", headers=bearer())
            posted = await http.post(
                f"/api/sessions/{job.session_id}/messages",
                json={"content": "hi"},
                headers=bearer(),
            )
            for response in (polled, cancel, events, posted):
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "2"
            await asyncio.to_thread(server.start)
            await until(lambda: bool(app.state.bus.connected))
            again = await http.get(f"/api/jobs/{job.id}", headers=bearer())
            assert again.status_code == 200
    finally:
        await asyncio.to_thread(server.stop)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition nothing signals (the client's connection state), within a deadline."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
