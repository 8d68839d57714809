"""Request limits: messages per minute per user across gateway replicas, body and content size,
page sizes. The per-minute window lives in a real JetStream KV bucket shared by the replicas.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import nats
import pytest
from fastapi import FastAPI
from nats.aio.client import Client
from nats.js.kv import KeyValue
from services.gateway.ratelimit import SlidingWindow

from contracts import subjects
from contracts.history import MAX_PAGE
from services.gateway.app import create_app
from services.runtime.meta import BusUnavailable
from tests.integration.test_gateway_auth_jwks import serve
from tests.integration.test_gateway_nats import responders
from tests.unit.test_gateway_auth import Clock
from tests.unit.test_gateway_fakes import (
    FakeBus,
    FakeHistory,
    bearer,
    gateway_client,
    make_settings,
)

pytestmark = pytest.mark.integration
STREAM = subjects.CHAT_JOBS_STREAM.name
PER_MINUTE = 3


async def replica(stack: AsyncExitStack, nats_url: str, **overrides: Any) -> httpx.AsyncClient:
    """Start one gateway replica on the real bus and return an HTTP client of it."""
    values = {"nats_url": nats_url, "max_active_jobs_per_user": 100, **overrides}
    app: FastAPI = create_app(make_settings(**values))
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    return await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url="http://gateway")
    )


@pytest.fixture
async def replicas(clean_nats: str) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with AsyncExitStack() as stack:
        first = await replica(stack, clean_nats, max_messages_per_minute=PER_MINUTE)
        second = await replica(stack, clean_nats, max_messages_per_minute=PER_MINUTE)
        yield first, second


@pytest.fixture
async def history(clean_nats: str) -> AsyncIterator[FakeHistory]:
    served = FakeHistory()
    async with responders(clean_nats, served, list(served.handlers())):
        yield served


@pytest.fixture
async def nc(clean_nats: str) -> AsyncIterator[Client]:
    conn = await nats.connect(clean_nats)
    yield conn
    await conn.close()


async def rate_kv(nc: Client) -> KeyValue:
    return await nc.jetstream().key_value(subjects.RATE_BUCKET)


async def new_session(client: httpx.AsyncClient, user: str) -> str:
    answer = await client.post("/api/sessions", json={}, headers=bearer(user))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def post(client: httpx.AsyncClient, user: str, session: str, text: str = "hi") -> Any:
    return client.post(
        f"/api/sessions/{session}/messages", json={"content": text}, headers=bearer(user)
    )


async def stored_jobs(nc: Client) -> int:
    return int((await nc.jetstream().stream_info(STREAM)).state.messages)


# ---- messages per minute, across replicas ---------------------------------------------------


async def test_the_per_minute_limit_holds_across_replicas(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], history: FakeHistory, nc: Client
) -> None:
    first, second = replicas
    user = f"rate-{uuid.uuid4().hex[:8]}"
    session = await new_session(first, user)
    replicas_in_turn = (first, second, first)
    accepted = [await post(gw, user, session, f"m{n}") for n, gw in enumerate(replicas_in_turn)]
    assert [a.status_code for a in accepted] == [202, 202, 202]
    kv = await rate_kv(nc)
    before = await kv.get(subjects.user_rate(user))

    refused = [await post(gw, user, session, "one too many") for gw in (second, first)]

    for answer in refused:
        assert answer.status_code == 429, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert 1 <= int(answer.headers["retry-after"]) <= 60
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
    # A refused message changes nothing: no stored message, no job, no new window entry.
    assert [m.content for m in history.messages[uuid.UUID(session)]] == ["m0", "m1", "m2"]
    assert await stored_jobs(nc) == 3
    after = await kv.get(subjects.user_rate(user))
    assert (after.revision, after.value) == (before.revision, before.value)
    # Other users have windows of their own.
    other = f"rate-other-{uuid.uuid4().hex[:8]}"
    assert (await post(second, other, await new_session(second, other))).status_code == 202


async def test_concurrent_posts_on_two_replicas_take_exactly_the_limit(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], history: FakeHistory, nc: Client
) -> None:
    first, second = replicas
    user = f"burst-{uuid.uuid4().hex[:8]}"
    session = await new_session(first, user)
    answers = await asyncio.gather(
        *(post(gw, user, session, f"b{n}") for n in range(6) for gw in (first, second))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202] * PER_MINUTE + [429] * (12 - PER_MINUTE), [a.text for a in answers]
    assert len(history.messages[uuid.UUID(session)]) == PER_MINUTE
    assert await stored_jobs(nc) == PER_MINUTE


async def test_rate_bucket_gone_answers_503_and_stores_nothing(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], history: FakeHistory, nc: Client
) -> None:
    first, _ = replicas
    user = f"gone-{uuid.uuid4().hex[:8]}"
    session = await new_session(first, user)
    await nc.jetstream().delete_key_value(subjects.RATE_BUCKET)
    answer = await post(first, user, session)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"]
    assert answer.headers["content-type"] == "application/problem+json"
    assert history.messages[uuid.UUID(session)] == []
    assert await stored_jobs(nc) == 0


async def test_a_zero_limit_turns_the_limiter_off(clean_nats: str, history: FakeHistory) -> None:
    async with AsyncExitStack() as stack:
        gw = await replica(stack, clean_nats, max_messages_per_minute=0)
        user = f"free-{uuid.uuid4().hex[:8]}"
        session = await new_session(gw, user)
        answers = [await post(gw, user, session, f"f{n}") for n in range(PER_MINUTE + 2)]
    assert {a.status_code for a in answers} == {202}


async def test_the_window_slides_on_the_real_bucket(nc: Client, clean_nats: str) -> None:
    kv = await nc.jetstream().create_key_value(bucket=subjects.RATE_BUCKET, history=1, ttl=120)
    clock = Clock(now=10_000.0)
    window = SlidingWindow(kv, clock)
    key = subjects.user_rate(f"slide-{uuid.uuid4().hex[:8]}")
    assert (await window.take(key, 2, 60)).allowed
    clock.advance(10)
    assert (await window.take(key, 2, 60)).allowed
    clock.advance(20)
    refused = await window.take(key, 2, 60)
    assert not refused.allowed and refused.retry_after == pytest.approx(30)
    clock.advance(30.5)  # the first message left the window, the second has not
    assert (await window.take(key, 2, 60)).allowed
    again = await window.take(key, 2, 60)
    assert not again.allowed and again.retry_after == pytest.approx(9.5)
    await kv.put(key, b"not json")
    assert (await window.take(key, 2, 60)).allowed  # an unreadable window starts afresh


async def test_concurrent_takes_from_separate_connections_never_overshoot(
    nc: Client, clean_nats: str
) -> None:
    await nc.jetstream().create_key_value(bucket=subjects.RATE_BUCKET, history=1, ttl=120)
    others = [await nats.connect(clean_nats) for _ in range(3)]
    try:
        buckets = [await c.jetstream().key_value(subjects.RATE_BUCKET) for c in others]
        windows = [SlidingWindow(kv) for kv in buckets]
        key = subjects.user_rate(f"cas-{uuid.uuid4().hex[:8]}")
        decisions = await asyncio.gather(*(w.take(key, 5, 60) for w in windows for _ in range(8)))
    finally:
        for c in others:
            await c.close()
    assert sum(d.allowed for d in decisions) == 5


# ---- limits that need no bus: the rate store failing, body and content size, page sizes -----


async def test_rate_store_down_is_503_like_any_bus_failure() -> None:
    bus = FakeBus(failures={"rates": BusUnavailable("rate bucket gone")})
    async with gateway_client(bus) as (client, _):
        session = await new_session(client, "alice")
        answer = await post(client, "alice", session)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert bus.published == [] and bus.history.messages[uuid.UUID(session)] == []


async def test_refused_messages_leave_the_fake_window_unchanged() -> None:
    clock = Clock(now=50_000.0)
    bus = FakeBus(rate_clock=clock)
    async with gateway_client(bus, max_messages_per_minute=2) as (client, _):
        session = await new_session(client, "alice")
        statuses = [(await post(client, "alice", session)).status_code for _ in range(2)]
        entry = bus.rates_kv.entries[subjects.user_rate("alice")]
        clock.advance(45)
        refused = await post(client, "alice", session)
        assert bus.rates_kv.entries[subjects.user_rate("alice")] == entry
        clock.advance(15)
        statuses.append((await post(client, "alice", session)).status_code)
    assert statuses == [202, 202, 202]
    assert refused.status_code == 429 and refused.headers["retry-after"] == "15"
    assert len(bus.published) == 3


@pytest.mark.parametrize(
    "path",
    ["/api/sessions", "/api/sessions/{sid}/messages", "/api/history", "/api/memories"],
)
async def test_every_list_endpoint_takes_limit_1_to_200_only(path: str) -> None:
    async with gateway_client() as (client, _):
        url = path.format(sid=await new_session(client, "alice"))
        for limit in ("0", "-1", str(MAX_PAGE + 1), "many", "1.5"):
            answer = await client.get(url, params={"limit": limit}, headers=bearer())
            assert answer.status_code == 422, (limit, answer.text)
            assert answer.json()["errors"][0]["loc"] == ["query", "limit"]
        for limit in ("1", str(MAX_PAGE)):
            assert (await client.get(url, params={"limit": limit}, headers=bearer())).is_success


async def test_body_and_content_limits_over_a_real_http_server() -> None:
    bus = FakeBus()
    app = create_app(make_settings(max_content_bytes=100), bus=bus)
    limit = app.state.settings.max_body_bytes
    async with serve(app) as base, httpx.AsyncClient(base_url=base, headers=bearer()) as http:
        session = (await http.post("/api/sessions", json={})).json()["id"]
        url = f"/api/sessions/{session}/messages"

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"content": "'
            for _ in range(limit // 1000 + 1):
                yield b"a" * 1000
            yield b'"}'

        declared = await http.post(
            url, content=b'{"content": "' + b"a" * limit + b'"}',
            headers={"Content-Type": "application/json"},
        )
        json_type = {"Content-Type": "application/json"}
        streamed = await http.post(url, content=chunks(), headers=json_type)
        too_long = await http.post(url, json={"content": "é" * 51})
        fits = await http.post(url, json={"content": "é" * 50})
    assert [declared.status_code, streamed.status_code, too_long.status_code] == [413, 413, 413]
    assert all(
        a.headers["content-type"] == "application/problem+json"
        for a in (declared, streamed, too_long)
    )
    assert fits.status_code == 202
    assert len(bus.published) == 1
