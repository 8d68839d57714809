"""The agent's job store over an in-memory bucket: compare-and-set, and waiting for a job's end."""

import asyncio
from typing import cast

import pytest
from nats.js.kv import KeyValue

from contracts.chat import JobState
from services.agent.errors import JobConflict, JobStoreError
from services.agent.jobs import KvJobStore
from services.runtime.kv import Entries
from tests.kv import FakeKV
from tests.unit.test_agent_fakes import WAIT, make_request, queued


def store_over(kv: FakeKV) -> KvJobStore:
    """Return a store bound to ``kv`` as ``open`` binds it to the real bucket."""
    store = KvJobStore(timeout=WAIT)
    store._entries = Entries(cast(KeyValue, kv), JobState, WAIT)
    return store


async def test_a_store_not_opened_refuses() -> None:
    with pytest.raises(JobStoreError, match="not open"):
        await KvJobStore(timeout=1.0).get(make_request().job_id)


async def test_create_get_and_compare_and_set() -> None:
    store = store_over(FakeKV())
    state = queued(make_request())
    assert await store.get(state.id) is None

    created = await store.create(state)
    with pytest.raises(JobConflict):
        await store.create(state)
    running = state.model_copy(update={"status": "running", "attempts": 1})
    updated = await store.update(running, created.revision)
    with pytest.raises(JobConflict):
        await store.update(running, created.revision)  # a stale revision loses

    found = await store.get(state.id)
    assert found is not None and found == updated and found.value == running


async def test_an_unreadable_record_is_a_store_error() -> None:
    kv = FakeKV()
    state = queued(make_request())
    await kv.put(str(state.id), b'{"not": "a job"}')
    with pytest.raises(JobStoreError, match="unreadable JobState"):
        await store_over(kv).get(state.id)


async def test_wait_ended_wakes_when_the_job_ends() -> None:
    kv = FakeKV()
    store = store_over(kv)
    created = await store.create(queued(make_request()))
    waiting = asyncio.create_task(store.wait_ended(created.value.id, WAIT))
    await asyncio.sleep(0.01)
    running = await store.update(created.value.model_copy(update={"status": "running"}), 1)
    await asyncio.sleep(0.01)
    assert not waiting.done()  # running is not an end

    await store.update(running.value.model_copy(update={"status": "failed"}), running.revision)

    assert await asyncio.wait_for(waiting, WAIT) is True
    assert kv._js.subscriptions == []  # the consumer was removed


async def test_wait_ended_is_true_at_once_for_an_ended_or_missing_job() -> None:
    store = store_over(FakeKV())
    ended = await store.create(queued(make_request(), status="cancelled"))
    assert await store.wait_ended(ended.value.id, WAIT) is True
    assert await store.wait_ended(make_request().job_id, WAIT) is True


async def test_wait_ended_is_true_when_the_job_is_deleted_meanwhile() -> None:
    kv = FakeKV()
    store = store_over(kv)
    created = await store.create(queued(make_request()))
    waiting = asyncio.create_task(store.wait_ended(created.value.id, WAIT))
    await asyncio.sleep(0.01)
    await kv.delete(str(created.value.id))
    assert await asyncio.wait_for(waiting, WAIT) is True


async def test_wait_ended_is_false_when_the_job_outlasts_the_wait() -> None:
    store = store_over(FakeKV())
    created = await store.create(queued(make_request()))
    assert await store.wait_ended(created.value.id, 0.05) is False


async def test_wait_ended_without_time_to_wait_is_false_for_an_unfinished_job() -> None:
    store = store_over(FakeKV())
    created = await store.create(queued(make_request()))
    assert await store.wait_ended(created.value.id, 0.0) is False
