"""Admission of chat jobs in the user append: limits, order, multitask, EndJob, the job event.

SQLite here; the integration tier collects these again against Postgres.
"""

import asyncio
import contextvars
import uuid
from datetime import timedelta
from typing import Any

import pytest

from contracts import subjects
from contracts.base import utcnow
from contracts.chat import RequestChat
from contracts.history import DeleteSession, EndJob, MessageReply, SessionRecord
from services.history.admission import JOBS_RETRY_AFTER
from services.history.errors import Conflict, HistoryError, RateLimited, TooManyJobs
from services.history.outbox import Relay
from services.history.service import HistoryService
from services.history.store import Store
from tests.unit.test_history_service import (  # noqa: F401  (fixtures)
    META,
    RecordingPublisher,
    _create,
    _get,
    _reply,
    admission,
    build_service,
    database_url_fixture,
    publisher_fixture,
    relay_fixture,
    service_fixture,
    store_at,
)


async def _user(
    service: HistoryService, session: SessionRecord, job: uuid.UUID | None = None, **limits: Any
) -> MessageReply:
    """Append a user message with this admission; return the reply."""
    return await _reply(service, session, job=job or uuid.uuid4(), admit=admission(**limits))


async def _refused(call: Any) -> HistoryError:
    with pytest.raises(HistoryError) as refused:
        await call
    return refused.value


async def _count(store: Store, table: str, where: str = "") -> int:
    [[count]] = await store.sql.fetch(f"SELECT count(*) FROM {{s}}.{table} {where}")
    return int(count)


async def test_too_many_unfinished_jobs_are_refused_and_nothing_is_stored(
    service: HistoryService,
) -> None:
    one, two = await _create(service, persona="a"), await _create(service, persona="b")
    first = await _user(service, one, max_active_jobs=2)
    await _user(service, two, max_active_jobs=2)  # the limit is the user's, across sessions
    stored, events = await _count(service.store, "messages"), await _count(service.store, "outbox")

    refused = await _refused(_user(service, one, max_active_jobs=2))
    assert isinstance(refused, TooManyJobs) and refused.code == "too_many_jobs"
    assert refused.retry_after == JOBS_RETRY_AFTER
    assert await _count(service.store, "messages") == stored
    assert await _count(service.store, "outbox") == events
    assert (await _get(service, one)).message_count == 1

    # A repeat of an admitted job is answered as stored, never refused.
    assert first.message is not None
    again = await _user(service, one, job=first.message.job_id, max_active_jobs=2)
    assert not again.created and again.message == first.message
    # Other users and no limit are not affected; a reply ends a job and frees a place.
    other = await _create(service, user="bob")
    assert (await _user(service, other, max_active_jobs=2)).created
    assert (await _user(service, one, max_active_jobs=0)).created
    await _reply(service, one, role="assistant", job=first.message.job_id)
    assert (await _user(service, one, max_active_jobs=4)).created


async def test_messages_per_minute_are_refused_until_the_oldest_leaves_the_window(
    service: HistoryService,
) -> None:
    session = await _create(service)
    sent = [await _user(service, session, max_messages_per_minute=3) for _ in range(3)]
    first = sent[0].message
    assert first is not None
    refused = await _refused(_user(service, session, max_messages_per_minute=3))
    assert isinstance(refused, RateLimited) and refused.code == "rate_limited"
    expected = (first.created_at + timedelta(seconds=60) - utcnow()).total_seconds()
    assert refused.retry_after is not None and 0 < refused.retry_after <= 60
    assert abs(refused.retry_after - expected) < 2
    assert (await _get(service, session)).message_count == 3
    again = await _user(service, session, job=first.job_id, max_messages_per_minute=3)
    assert not again.created  # a repeat is never refused

    # A minute later the oldest messages left the window (moved back in time here).
    async with service.store.sql.write() as tx:
        minute_ago = utcnow() - timedelta(seconds=61)
        await tx.execute("UPDATE {s}.messages SET created_at = $1", minute_ago)
    assert (await _user(service, session, max_messages_per_minute=3)).created


async def test_appends_arriving_together_hold_the_limit_exactly(service: HistoryService) -> None:
    sessions = [await _create(service, persona=f"p{i}") for i in range(4)]
    calls = [_user(service, sessions[i % 4], max_active_jobs=5) for i in range(12)]
    batches = service.appends.batches
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    admitted = [o for o in outcomes if isinstance(o, MessageReply)]
    assert len(admitted) == 5
    assert all(isinstance(o, TooManyJobs) for o in outcomes if o not in admitted)
    assert service.appends.batches - batches < 12  # they shared transactions
    assert sum([(await _get(service, s)).message_count for s in sessions]) == 5


async def test_two_replicas_at_the_limit_admit_exactly_the_limit(
    service: HistoryService, database_url: str
) -> None:
    other_store = store_at(database_url)  # a second replica: its own batches
    other = build_service(other_store, RecordingPublisher())
    try:
        sessions = [await _create(service, persona=f"p{i}") for i in range(6)]
        calls = [
            _user(replica, sessions[i % 6], max_active_jobs=7, max_messages_per_minute=9)
            for i, replica in enumerate([service, other] * 15)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await other.outbox.settle()  # type: ignore[attr-defined]
    finally:
        await other_store.sql.close()
    admitted = [o for o in outcomes if isinstance(o, MessageReply)]
    refused = [o for o in outcomes if not isinstance(o, MessageReply)]
    assert len(admitted) == 7
    assert all(isinstance(o, TooManyJobs) for o in refused), refused
    assert await _count(service.store, "messages") == 7
    assert await _count(service.store, "outbox") == 7


async def test_each_job_follows_the_sessions_unfinished_tail(service: HistoryService) -> None:
    session = await _create(service)
    other = await _create(service, persona="other")
    j1 = await _user(service, session)
    j2 = await _user(service, session)
    j3 = await _user(service, session)
    elsewhere = await _user(service, other)
    assert j1.follows is None and elsewhere.follows is None  # sessions run in parallel
    assert j1.message is not None and j2.message is not None and j3.message is not None
    assert j2.follows == j1.message.job_id and j3.follows == j2.message.job_id

    # A repeat answers the same order, even after the job it follows ended.
    await _reply(service, session, role="assistant", job=j1.message.job_id)
    again = await _user(service, session, job=j2.message.job_id)
    assert not again.created and again.follows == j1.message.job_id

    # The tail's reply is stored: the next job follows nothing.
    await _reply(service, session, role="assistant", job=j3.message.job_id)
    j4 = await _user(service, session)
    assert j4.follows is None and j4.message is not None
    # Ended without a reply (EndJob): the same.
    await service.end_job(EndJob(user_id="alice", job_id=j4.message.job_id), META)
    assert (await _user(service, session)).follows is None


async def test_follows_is_exact_within_one_batch(service: HistoryService) -> None:
    session = await _create(service)
    jobs = [uuid.uuid4() for _ in range(6)]
    replies = await asyncio.gather(*(_user(service, session, job=j) for j in jobs))
    chain = {r.message.job_id: r.follows for r in replies if r.message is not None}
    # One order, whatever the batches: one head, every other job follows one before it.
    heads = [j for j, f in chain.items() if f is None]
    assert len(heads) == 1
    assert sorted(str(f) for f in chain.values() if f) == sorted(
        str(j) for j in jobs if j != _last(chain)
    )


def _last(chain: dict[uuid.UUID, uuid.UUID | None]) -> uuid.UUID:
    followed = set(chain.values())
    [last] = [j for j in chain if j not in followed]
    return last


async def test_reject_refuses_while_the_session_has_an_unfinished_job(
    service: HistoryService,
) -> None:
    session = await _create(service)
    first = await _user(service, session, multitask="reject")
    assert first.created and first.message is not None
    before = await _count(service.store, "messages")
    refused = await _refused(_user(service, session, multitask="reject"))
    assert isinstance(refused, Conflict)
    assert str(refused) == "the session has a job queued or running"
    assert await _count(service.store, "messages") == before
    other = await _create(service, persona="other")  # another session is free
    assert (await _user(service, other, multitask="reject")).created
    await service.end_job(EndJob(user_id="alice", job_id=first.message.job_id), META)
    assert (await _user(service, session, multitask="reject")).created


async def test_interrupt_names_the_unfinished_jobs_to_cancel(service: HistoryService) -> None:
    session = await _create(service)
    j1 = await _user(service, session)
    j2 = await _user(service, session)
    done = await _user(service, session)
    assert j1.message and j2.message and done.message
    await _reply(service, session, role="assistant", job=done.message.job_id)
    stop = await _user(service, session, multitask="interrupt")
    assert set(stop.interrupted) == {j1.message.job_id, j2.message.job_id}
    assert stop.follows is None  # the tail (done) has its reply
    assert stop.message is not None
    again = await _user(service, session, job=stop.message.job_id, multitask="interrupt")
    assert not again.created and set(again.interrupted) == set(stop.interrupted)
    quiet = await _create(service, persona="quiet")
    assert (await _user(service, quiet, multitask="interrupt")).interrupted == ()


async def test_end_job_is_idempotent_and_only_the_owners(service: HistoryService) -> None:
    session = await _create(service)
    job = await _user(service, session, max_active_jobs=1)
    assert job.message is not None and job.message.job_id is not None
    end = EndJob(user_id="alice", job_id=job.message.job_id)
    assert not (await service.end_job(EndJob(user_id="bob", job_id=end.job_id), META)).known
    await _refused(_user(service, session, max_active_jobs=1))  # still unfinished
    assert (await service.end_job(end, META)).known
    assert (await service.end_job(end, META)).known  # again: changes nothing
    assert not (await service.end_job(EndJob(user_id="alice", job_id=uuid.uuid4()), META)).known
    assert (await _user(service, session, max_active_jobs=1)).created


async def test_delete_names_only_the_unfinished_jobs(service: HistoryService) -> None:
    session = await _create(service)
    running = await _user(service, session)
    answered = await _user(service, session)
    ended = await _user(service, session)
    assert running.message and answered.message and ended.message
    await _reply(service, session, role="assistant", job=answered.message.job_id)
    await service.end_job(EndJob(user_id="alice", job_id=ended.message.job_id), META)
    reply = await service.delete_session(
        DeleteSession(user_id="alice", session_id=session.id), META
    )
    assert reply.unfinished == (running.message.job_id,)


async def test_jobs_unfinished_for_a_day_stop_counting(service: HistoryService) -> None:
    session = await _create(service)
    stale = await _user(service, session, max_active_jobs=1)
    assert stale.message is not None
    async with service.store.sql.write() as tx:  # a day passes and nobody reported its end
        await tx.execute("UPDATE {s}.messages SET created_at = $1", utcnow() - timedelta(hours=25))
    fresh = await _user(service, session, max_active_jobs=1)
    assert fresh.created and fresh.follows is None


async def test_an_admitted_job_is_announced_once_on_chat_requested(
    service: HistoryService, publisher: RecordingPublisher, relay: Relay
) -> None:
    session = await _create(service)
    first = await _user(service, session)
    second = await _reply(
        service, session, content="and then?", admit=admission(max_active_jobs=9)
    )
    await _user(service, session, job=first.message.job_id if first.message else None)
    await _refused(_user(service, session, max_active_jobs=1))  # refused: nothing queued
    await relay.settle()
    jobs = publisher.on(subjects.CHAT_REQUESTED)
    assert [p.msg_id for p in jobs] == [
        str(r.message.job_id) for r in (first, second) if r.message
    ]
    assert all(p.stream == subjects.CHAT_JOBS_STREAM.name and p.meta == META for p in jobs)
    body = jobs[1].body
    assert isinstance(body, RequestChat) and second.message is not None
    assert body.model_dump() == RequestChat(
        job_id=second.message.job_id, user_id="alice", session_id=session.id, persona="p1",
        message_id=second.message.id, content="and then?", created_at=body.created_at,
        follows=second.follows, revision=1,
    ).model_dump()
    assert body.follows == first.message.job_id if first.message else False
    # Marked sent: the timer finds nothing to publish again.
    assert await relay.drain() == 0
    assert await _count(service.store, "outbox", "WHERE sent_at IS NULL") == 0


class Crashing(Relay):
    """A relay whose process dies right after the commit: the announcement never leaves."""

    def announce(self, events: Any) -> None:
        return None


async def test_a_job_left_by_a_crash_after_the_commit_is_published_by_the_timer(
    service: HistoryService, database_url: str
) -> None:
    session = await _create(service)
    crashing = HistoryService(
        service.store, service.cache, Crashing(service.store, RecordingPublisher()),
        instance="dies", lease=0.2,
    )
    reply = await _user(crashing, session)
    assert reply.created and reply.message is not None
    store = store_at(database_url)  # another replica, later
    try:
        later = RecordingPublisher()
        timer = Relay(store, later)
        assert await timer.drain() == 0  # the lease of the dead append still runs
        await asyncio.sleep(0.3)
        assert await timer.drain() == 1
        assert await timer.drain() == 0
    finally:
        await store.sql.close()
    [job] = later.on(subjects.CHAT_REQUESTED)
    assert job.msg_id == str(reply.message.job_id) and job.meta.request_id == META.request_id
    assert isinstance(job.body, RequestChat) and job.body.message_id == reply.message.id


async def test_a_failed_announcement_is_left_to_the_timer(
    service: HistoryService, publisher: RecordingPublisher, relay: Relay
) -> None:
    session = await _create(service)
    publisher.fail = True
    reply = await _user(service, session)
    assert reply.created  # the job is stored and admitted whatever the bus does
    await relay.settle()
    assert publisher.sent == [] and relay._failing
    publisher.fail = False
    assert await relay.drain() == 1  # released at once, not after the lease
    assert [p.subject for p in publisher.sent] == [subjects.CHAT_REQUESTED]


async def test_two_replicas_appending_to_one_session_keep_one_order(
    service: HistoryService, database_url: str
) -> None:
    other_store = store_at(database_url)  # a second replica: its own connections and batches
    other = build_service(other_store, RecordingPublisher())
    try:
        session = await _create(service)
        for _ in range(3):
            jobs = [uuid.uuid4() for _ in range(12)]
            replicas = [service, other] * 6
            replies = await asyncio.gather(
                *(_user(r, session, job=j) for r, j in zip(replicas, jobs, strict=True))
            )
            # Every job follows the one admitted just before it: a single chain.
            chain = {r.message.job_id: r.follows for r in replies if r.message is not None}
            heads = [j for j, f in chain.items() if f is None or f not in chain]
            assert len(heads) == 1, chain
            followed = [f for f in chain.values() if f in chain]
            assert len(followed) == len(set(followed)) == len(jobs) - 1
            for job in jobs:  # answered: the next round starts a new chain
                await _reply(service, session, role="assistant", job=job)
        await other.outbox.settle()  # type: ignore[attr-defined]
    finally:
        await other_store.sql.close()


WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


class ContextRecorder(RecordingPublisher):
    """Note which request's context each publish ran in."""

    seen: list[str]

    async def publish(self, subject: str, body: Any, meta: Any, **kwargs: Any) -> None:
        self.seen.append(WHO.get())
        await super().publish(subject, body, meta, **kwargs)


async def test_each_job_is_published_in_the_context_of_its_request(
    service: HistoryService,
) -> None:
    publisher = ContextRecorder()
    publisher.seen = []
    relay = Relay(service.store, publisher)
    batching = HistoryService(service.store, service.cache, relay, instance="ctx")
    sessions = [await _create(batching, persona=f"p{i}") for i in range(3)]

    async def as_request(name: str, session: SessionRecord) -> None:
        WHO.set(name)  # as the responder binds a request's id and its trace span
        await _user(batching, session)

    await asyncio.gather(*(as_request(f"req-{i}", s) for i, s in enumerate(sessions)))
    await relay.settle()
    assert sorted(publisher.seen) == ["req-0", "req-1", "req-2"]
