"""The event outbox against a real store (SQLite here; Postgres in the integration tier)."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from contracts import subjects
from contracts.base import utcnow
from contracts.history import ArchiveSession, CreateSession
from services.history.outbox import Relay
from services.history.service import HistoryService
from services.history.store import Store, Tx
from tests.unit.test_history_service import (  # noqa: F401  (fixtures)
    META,
    RecordingPublisher,
    _create,
    _get,
    build_service,
    database_url_fixture,
    publisher_fixture,
    relay_fixture,
    service_fixture,
    store_at,
)


class CommitFails(Store):
    """A store whose write transactions fail at the last moment and roll back."""

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        async with super().write() as tx:
            yield tx
            raise RuntimeError("the database refused the commit")


async def _pending(store: Store) -> int:
    [[count]] = await store.sql.fetch("SELECT count(*) FROM {s}.outbox WHERE sent_at IS NULL")
    return int(count)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_rolled_back_writes_emit_nothing(
    service: HistoryService, publisher: RecordingPublisher, relay: Relay
) -> None:
    session = await _create(service)
    failing = build_service(CommitFails(service.store.sql), publisher)

    with pytest.raises(RuntimeError):
        await failing.archive_session(ArchiveSession(user_id="alice", session_id=session.id), META)
    with pytest.raises(RuntimeError):
        await failing.create_session(CreateSession(user_id="alice", persona="p1"), META)

    assert (await _get(service, session)).status == "active"
    assert await _pending(service.store) == 0
    assert await relay.drain() == 0 and publisher.sent == []


async def test_committed_events_survive_a_crash_before_publishing(
    service: HistoryService, database_url: str
) -> None:
    session = await _create(service)
    # The service committed and "died" before its relay ran: nothing was published.
    await service.archive_session(ArchiveSession(user_id="alice", session_id=session.id), META)

    store = store_at(database_url)  # a new process
    try:
        later = RecordingPublisher()
        assert await Relay(store, later).drain() == 1
    finally:
        await store.sql.close()
    assert [p.msg_id for p in later.sent] == [f"{session.id}.archived"]
    assert later.sent[0].meta.request_id == META.request_id
    assert later.sent[0].stream == subjects.SESSION_EVENTS_STREAM.name


async def test_concurrent_relays_publish_each_event_once(
    service: HistoryService, database_url: str
) -> None:
    made = [await _create(service, persona=f"p{i}") for i in range(12)]
    for session in made:
        await service.archive_session(ArchiveSession(user_id="alice", session_id=session.id), META)

    stores = [store_at(database_url) for _ in range(3)]
    publishers = [RecordingPublisher() for _ in stores]
    try:
        relays = [Relay(s, p) for s, p in zip(stores, publishers, strict=True)]
        counts = await asyncio.gather(*(r.drain() for r in relays))
    finally:
        for store in stores:
            await store.sql.close()
    ids = [str(p.msg_id) for pub in publishers for p in pub.sent]
    assert sum(counts) == 12 and sorted(ids) == sorted(f"{s.id}.archived" for s in made)


async def test_a_dead_relays_claim_expires_and_another_takes_it(
    service: HistoryService, publisher: RecordingPublisher
) -> None:
    session = await _create(service)
    await service.archive_session(ArchiveSession(user_id="alice", session_id=session.id), META)
    dead = Relay(service.store, RecordingPublisher(), lease=timedelta(hours=1))
    assert len(await dead._claim()) == 1  # claimed, then the replica died

    other = Relay(service.store, publisher)
    assert await other.drain() == 0  # still leased
    async with service.store.sql.write() as tx:  # an hour passes
        expired = utcnow() - timedelta(seconds=1)
        await tx.execute("UPDATE {s}.outbox SET claimed_until = $1", expired)
    assert await other.drain() == 1
    assert [p.msg_id for p in publisher.sent] == [f"{session.id}.archived"]


async def test_background_relay_publishes_on_wake_and_retries_on_its_timer(
    service: HistoryService, publisher: RecordingPublisher
) -> None:
    relay = Relay(service.store, publisher, interval=0.05)
    service.outbox = relay
    relay.start()
    try:
        first = await _create(service)
        publisher.fail = True
        second = await _create(service)  # archives ``first``: the publish fails
        await _until(lambda: relay._failing)
        assert publisher.sent == []
        publisher.fail = False
        await _until(lambda: len(publisher.sent) == 1)  # the timer retried
        await service.archive_session(ArchiveSession(user_id="alice", session_id=second.id), META)
        await _until(lambda: len(publisher.sent) == 2)  # woken by the commit
    finally:
        await relay.stop()
    assert [p.msg_id for p in publisher.sent] == [f"{first.id}.archived", f"{second.id}.archived"]
    assert await _pending(service.store) == 0


async def test_sent_rows_are_pruned_after_the_retention(
    service: HistoryService, publisher: RecordingPublisher
) -> None:
    session = await _create(service)
    await service.archive_session(ArchiveSession(user_id="alice", session_id=session.id), META)
    keep = Relay(service.store, publisher)
    assert await keep.drain() == 1
    assert await keep.prune() == 0
    assert await Relay(service.store, publisher, retention=timedelta(0)).prune() == 1
