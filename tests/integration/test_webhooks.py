"""Signed webhooks on the real bus: the webhooks service, real NATS, SQLite, a real receiver."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import nats
import pytest
from faststream.nats import NatsBroker
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from contracts import subjects
from contracts.base import utcnow
from contracts.chat import JobState
from contracts.memory import MemoriesStored
from contracts.webhooks import (
    CreateEndpoint,
    DeliveryPage,
    DeliveryRecord,
    EndpointCreated,
    ListDeliveries,
    WebhookEvent,
)
from services.runtime.bus import BusClient
from services.runtime.meta import RequestMeta
from services.webhooks.app import create_app
from services.webhooks.config import Settings
from services.webhooks.db import DATABASE
from tests.databases import BACKENDS, ServiceDatabase
from tests.streams import eventually as polled
from tests.webhook_receiver import Receiver, receiving

pytestmark = pytest.mark.integration
T = TypeVar("T")
TIMEOUT = 20.0


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    value = await polled(probe, done, TIMEOUT)
    assert done(value), f"gave up waiting; last value: {value!r}"
    return value


class Hooks:
    """The webhooks service (restartable), a bus client, and a real receiver."""

    def __init__(self, nats_url: str, settings: Settings, receiver: Receiver) -> None:
        self.nats_url = nats_url
        self.settings = settings
        self.receiver = receiver
        self.app: Any = None
        self.client = NatsBroker(nats_url)
        self.bus = BusClient(self.client, 5.0)

    async def start(self) -> None:
        self.app = create_app(self.settings)
        await self.app.start()

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    async def register(
        self, path: str, events: tuple[WebhookEvent, ...] = ("job.completed",), user: str = "u1"
    ) -> EndpointCreated:
        body = CreateEndpoint(user_id=user, url=f"{self.receiver.url}{path}", events=events)
        created = await self.bus.request(
            subjects.WEBHOOKS_ENDPOINT_CREATE, body, EndpointCreated, RequestMeta(), 5.0
        )
        assert created.error is None, created.error
        return created

    async def deliveries(self, endpoint_id: UUID, user: str = "u1") -> list[DeliveryRecord]:
        page = await self.bus.request(
            subjects.WEBHOOKS_DELIVERY_LIST, ListDeliveries(user_id=user, endpoint_id=endpoint_id),
            DeliveryPage, RequestMeta(), 5.0,
        )
        assert page.error is None, page.error
        return list(page.items)

    async def settled(self, endpoint_id: UUID, count: int = 1) -> list[DeliveryRecord]:
        """Wait until ``count`` deliveries of the endpoint are delivered or given up."""
        return await eventually(
            lambda: self.deliveries(endpoint_id),
            lambda found: len([d for d in found if d.status != "pending"]) >= count,
        )

    async def job_ended(
        self, status: str = "completed", user: str = "u1", msg_id: str | None = None,
        job_id: UUID | None = None,
    ) -> JobState:
        """Publish a job's final event as the agent does."""
        now = utcnow()
        state = JobState(
            id=job_id or uuid.uuid4(), user_id=user, session_id=uuid.uuid4(), status=status,
            created_at=now - timedelta(seconds=1), finished_at=now, attempts=1,
        )
        nc = await nats.connect(self.nats_url)
        try:
            await nc.jetstream().publish(
                subjects.job_event(state.id, status), state.model_dump_json().encode(),
                stream=subjects.JOB_EVENTS_STREAM.name,
                headers={"Nats-Msg-Id": msg_id or f"{state.id}.final"},
            )
        finally:
            await nc.close()
        return state


StartHooks = Callable[..., Awaitable[Hooks]]


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def start_hooks(
    clean_nats: str, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[StartHooks]:
    database_url = await ServiceDatabase(DATABASE).fresh_url(backend, tmp_path, request)
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Hooks:
            receiver = await stack.enter_async_context(receiving())
            values: dict[str, Any] = {
                "nats_url": clean_nats, "database_url": database_url,
                "instance": "it-webhooks", "webhook_allow_private": True,
                "webhook_retry_initial": 0.4, "webhook_retry_max": 2.0, "webhook_timeout": 2.0,
                "webhook_fetch_timeout": 0.2,
            }
            hooks = Hooks(clean_nats, Settings(**(values | overrides)), receiver)
            await hooks.start()
            stack.push_async_callback(hooks.stop)
            await hooks.client.connect()
            stack.push_async_callback(hooks.client.stop)
            return hooks

        yield start


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_each_event_is_accepted_once_signed_after_a_visible_backoff(
    start_hooks: StartHooks,
) -> None:
    hooks = await start_hooks()
    flaky = await hooks.register("/flaky")
    failed_only = await hooks.register("/ok", events=("job.failed",))
    assert flaky.secret is not None and flaky.secret.startswith("whsec_")
    assert flaky.endpoint is not None and failed_only.endpoint is not None

    state = await hooks.job_ended("completed")
    [delivery] = await hooks.settled(flaky.endpoint.id)
    assert delivery.status == "delivered" and delivery.attempts == 3
    assert [a.status_code for a in delivery.attempt_log] == [500, 500, 200]
    first, second, third = delivery.attempt_log
    # Exponential backoff: 0.4 s then 0.8 s (±20% jitter), each due time recorded.
    assert first.next_attempt_at is not None and second.next_attempt_at is not None
    assert third.next_attempt_at is None
    gap1, gap2 = (second.at - first.at).total_seconds(), (third.at - second.at).total_seconds()
    assert 0.3 <= gap1 < 2.0 and 0.6 <= gap2 < 3.0 and gap2 > gap1
    assert delivery.last_error is None or "500" in delivery.last_error

    tries = hooks.receiver.at("/flaky")
    assert [r.status for r in tries] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in tries}) == 1
    accepted = hooks.receiver.accepted("/flaky")[0]
    payload = Webhook(flaky.secret).verify(accepted.body, accepted.headers)
    assert payload["type"] == "job.completed"
    assert payload["data"]["job"]["id"] == str(state.id)
    assert "user_id" not in payload["data"]["job"]
    tampered = accepted.body.replace(b"completed", b"cancelled")
    with pytest.raises(WebhookVerificationError):
        Webhook(flaky.secret).verify(tampered, accepted.headers)
    with pytest.raises(WebhookVerificationError):  # another endpoint's secret
        Webhook(str(failed_only.secret)).verify(accepted.body, accepted.headers)

    # The same event again, past the stream's dedup (another message id): nothing more sent.
    await hooks.job_ended("completed", msg_id="again", job_id=state.id)
    other = await hooks.job_ended("completed", user="u2")  # another user's job: not ours
    await asyncio.sleep(1.5)
    assert len(await hooks.deliveries(flaky.endpoint.id)) == 1
    assert len(hooks.receiver.accepted("/flaky")) == 1
    assert hooks.receiver.at("/ok") == [] and other.user_id == "u2"


async def test_other_4xx_gives_up_at_once_and_429_waits_for_retry_after(
    start_hooks: StartHooks,
) -> None:
    hooks = await start_hooks(webhook_retry_initial=0.1)
    gone = await hooks.register("/gone", events=("job.failed",))
    busy = await hooks.register("/busy", events=("job.failed",))
    assert gone.endpoint is not None and busy.endpoint is not None
    await hooks.job_ended("failed")

    [given_up] = await hooks.settled(gone.endpoint.id)
    assert (given_up.status, given_up.attempts, given_up.last_status_code) == ("failed", 1, 410)
    assert given_up.finished_at is not None
    [later] = await hooks.settled(busy.endpoint.id)
    assert later.status == "delivered"
    assert [a.status_code for a in later.attempt_log] == [429, 200]
    waited = (later.attempt_log[1].at - later.attempt_log[0].at).total_seconds()
    assert waited >= 0.9  # Retry-After: 1, not the 0.1 s backoff
    await asyncio.sleep(0.5)
    assert len(hooks.receiver.at("/gone")) == 1


async def test_memories_stored_are_sent_as_memory_created(start_hooks: StartHooks) -> None:
    hooks = await start_hooks()
    endpoint = await hooks.register("/ok", events=("memory.created",))
    assert endpoint.endpoint is not None
    event = MemoriesStored(
        session_id=uuid.uuid4(), user_id="u1", persona="friend",
        memory_ids=(uuid.uuid4(),), stored_at=utcnow(),
    )
    await hooks.bus.publish(
        subjects.MEMORY_STORED, event, RequestMeta(), stream=subjects.MEMORY_EVENTS_STREAM.name,
        msg_id=f"{event.session_id}.memories",
    )
    [delivery] = await hooks.settled(endpoint.endpoint.id)
    assert delivery.event_type == "memory.created" and delivery.status == "delivered"
    body = json.loads(hooks.receiver.accepted("/ok")[0].body)
    assert body["data"]["memory_ids"] == [str(event.memory_ids[0])]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_deliveries_survive_a_restart_mid_retry(start_hooks: StartHooks) -> None:
    hooks = await start_hooks(webhook_retry_initial=1.5)
    flaky = await hooks.register("/flaky")
    assert flaky.endpoint is not None
    await hooks.job_ended("completed")
    await eventually(lambda: asyncio.sleep(0, hooks.receiver.at("/flaky")), lambda r: len(r) >= 1)
    await hooks.stop()  # between the first failure and its retry
    await asyncio.sleep(0.5)
    assert len(hooks.receiver.at("/flaky")) == 1
    await hooks.start()

    [delivery] = await hooks.settled(flaky.endpoint.id)
    assert delivery.status == "delivered" and delivery.attempts == 3
    assert [r.status for r in hooks.receiver.at("/flaky")] == [500, 500, 200]
    assert len(hooks.receiver.accepted("/flaky")) == 1
