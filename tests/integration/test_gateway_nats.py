"""The gateway against a real NATS server and a history stand-in: isolation, readiness, a lost bus.

Posting messages to the real history is in ``test_gateway_admission.py``.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client

from contracts import subjects
from contracts.base import Contract, Pong, Reply
from services.gateway.app import create_app
from services.launcher.natsserver import NatsServer
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
                sid = await new_session(http)
                posted = await http.post(
                    f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
                )
                assert posted.status_code == 202, posted.text
                job = await app.state.bus.get_job(uuid.UUID(posted.json()["id"]))
                assert job is not None
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
