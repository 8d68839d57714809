"""Lanes keep order and limits under concurrent writers, on a real JetStream KV."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from services.runtime.bus import lanes_bucket, make_broker
from services.runtime.config import ServiceSettings
from services.runtime.lanes import LaneFull, Lanes

pytestmark = pytest.mark.integration


@pytest.fixture
async def lanes(clean_nats: str) -> AsyncIterator[Lanes]:
    broker = make_broker(ServiceSettings(nats_url=clean_nats), "test")
    await broker.connect()
    try:
        yield Lanes(await lanes_bucket(broker))
    finally:
        await broker.stop()


async def test_append_keeps_order_and_is_idempotent(lanes: Lanes) -> None:
    jobs = [uuid.uuid4() for _ in range(3)]
    for job in jobs:
        await lanes.append("session.a", job)
    await lanes.append("session.a", jobs[1])
    lane, revision = await lanes.read("session.a")
    assert lane.jobs == tuple(jobs)
    assert revision is not None
    assert (await lanes.remove("session.a", jobs[0])).jobs == (jobs[1], jobs[2])


async def test_concurrent_appends_respect_the_limit(lanes: Lanes) -> None:
    jobs = [uuid.uuid4() for _ in range(20)]
    results = await asyncio.gather(
        *(lanes.append("user.x", job, limit=8) for job in jobs), return_exceptions=True
    )
    full = [r for r in results if isinstance(r, LaneFull)]
    assert len(full) == 12
    lane, _ = await lanes.read("user.x")
    assert len(lane.jobs) == 8 and len(set(lane.jobs)) == 8


async def test_prune_drops_finished_jobs(lanes: Lanes) -> None:
    done, running = uuid.uuid4(), uuid.uuid4()
    await lanes.append("session.b", done)
    await lanes.append("session.b", running)

    async def finished(job: uuid.UUID) -> bool:
        return job == done

    assert (await lanes.prune("session.b", finished)).jobs == (running,)
