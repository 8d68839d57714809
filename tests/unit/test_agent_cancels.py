"""Cancel requests as a replica hears them: a watch over the cancel bucket, in memory."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast
from uuid import UUID

import pytest
from nats.js.kv import KeyValue

from contracts.chat import CancelRequest
from services.agent import cancels
from services.agent.cancels import PRUNE_EVERY, CancelWatch
from services.runtime.bus import JOB_TTL_SECONDS
from tests.kv import FakeKV, FakeWatcher
from tests.unit.test_agent_fakes import T0, WAIT


class Heard:
    """The ids a watch told, and a way to wait for one."""

    def __init__(self) -> None:
        self.ids: list[UUID] = []
        self.changed = asyncio.Event()

    def __call__(self, job_id: UUID) -> None:
        self.ids.append(job_id)
        self.changed.set()

    async def until(self, job_id: UUID) -> None:
        async with asyncio.timeout(WAIT):
            while job_id not in self.ids:
                self.changed.clear()
                await self.changed.wait()


async def ask(kv: FakeKV, job_id: UUID) -> None:
    """Write a cancel request as the gateway does."""
    request = CancelRequest(job_id=job_id, user_id="u1", requested_at=T0)
    await kv.put(str(job_id), request.model_dump_json().encode())


@asynccontextmanager
async def watching(kv: FakeKV, watch: CancelWatch) -> AsyncIterator[None]:
    task = asyncio.create_task(watch._watch_forever(cast(KeyValue, kv)))
    try:
        yield
    finally:
        # Cancel until it ends: on Python 3.11 a cancel can be swallowed inside nats-py.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.01)


async def test_current_requests_are_known_when_ready_and_later_ones_stop_jobs() -> None:
    kv, heard = FakeKV(), Heard()
    watch = CancelWatch(heard)
    earlier, withdrawn, later, last = (uuid.uuid4() for _ in range(4))
    await ask(kv, earlier)
    await ask(kv, withdrawn)
    await kv.delete(str(withdrawn))
    await kv.put("garbage", b"{not a cancel request")

    async with watching(kv, watch):
        await asyncio.wait_for(watch.ready.wait(), WAIT)
        assert earlier in watch and withdrawn not in watch
        assert heard.ids == [earlier]

        await ask(kv, later)
        await heard.until(later)
        await ask(kv, earlier)  # written again: already known, not told again
        await ask(kv, last)
        await heard.until(last)

    assert heard.ids == [earlier, later, last]
    assert kv.watchers == []  # the watch was stopped


async def test_a_lost_watch_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cancels, "RETRY_PAUSE", 0.0)

    class FlakyKV(FakeKV):
        def __init__(self) -> None:
            super().__init__()
            self.attempts = 0

        async def watchall(self) -> FakeWatcher:
            self.attempts += 1
            if self.attempts == 1:
                raise ConnectionError("the ordered consumer went with the connection")
            return await super().watchall()

    kv, heard = FlakyKV(), Heard()
    job_id = uuid.uuid4()
    await ask(kv, job_id)
    watch = CancelWatch(heard)
    async with watching(kv, watch):
        await heard.until(job_id)
    assert kv.attempts == 2 and watch.ready.is_set()


def test_remembered_requests_past_the_buckets_ttl_are_pruned() -> None:
    watch = CancelWatch(lambda _: None)
    long_ago = time.monotonic() - JOB_TTL_SECONDS - 1
    old = {uuid.uuid4(): long_ago for _ in range(PRUNE_EVERY - 2)}
    recent = uuid.uuid4()
    watch.requested = {**old, recent: time.monotonic()}

    watch._remember(new := uuid.uuid4())

    assert set(watch.requested) == {recent, new}
    assert watch._prune_at == 2 + PRUNE_EVERY
    assert next(iter(old)) not in watch


def test_nothing_is_pruned_before_the_count_is_reached() -> None:
    watch = CancelWatch(lambda _: None)
    long_ago = time.monotonic() - JOB_TTL_SECONDS - 1
    old = uuid.uuid4()
    watch.requested = {old: long_ago}
    watch._remember(uuid.uuid4())
    assert old in watch and len(watch.requested) == 2


async def test_stop_ends_the_watch_even_when_a_request_arrives_at_that_moment() -> None:
    kv, heard = FakeKV(), Heard()
    watch = CancelWatch(heard)
    watch._task = asyncio.create_task(watch._watch_forever(cast(KeyValue, kv)))
    await asyncio.wait_for(watch.ready.wait(), WAIT)
    for _ in range(3):
        await asyncio.sleep(0)  # the watch waits for the next update
    try:
        await ask(kv, uuid.uuid4())  # arrives, and in the same loop turn the replica stops
        await asyncio.wait_for(watch.stop(), 1.0)
    finally:
        while not watch._task.done():
            watch._task.cancel()
            await asyncio.wait([watch._task], timeout=0.01)
