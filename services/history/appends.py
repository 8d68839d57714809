"""Group commit of appended messages: appends that arrive together share one transaction.

A burst of chat messages means a burst of appends. While one batch is being
written, the appends that arrive wait in a queue; the next batch takes them all
and writes them in one transaction of three statements, whatever its size
(:mod:`services.history.batch`): lock the users' admissions
(Postgres) and the sessions; read the sessions' tails, earlier copies of the
messages and what admission needs; then insert the messages, advance the
sessions, end the replied jobs, queue the admitted jobs' ``RequestChat`` in the
outbox and mark the jobs published since the last batch sent. An append that
arrives alone is written at once, as a batch of one.

Each append still gets its own answer: stored (with the job it follows and the
jobs it interrupts), a duplicate of what its job stored before (also earlier in
the same batch), or refused (no such session, archived, a limit, reject). If a
concurrent writer elsewhere stored one of the batch's messages first, the batch
rolls back and its appends are written one by one, each as a batch of one.

After the commit, and before any append is answered, the cache entries the
batch changed are retired (one round trip) and the admitted jobs are handed to
the outbox relay, which publishes them at once.
"""

import asyncio
import contextvars
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from contracts import subjects
from contracts.base import utcnow
from contracts.chat import RequestChat
from contracts.history import Admission, AppendMessage, MessageRecord, MessageReply
from services.history.admission import JOB_HORIZON, RATE_WINDOW, Admissions, needs
from services.history.batch import StoredMessage, load_batch, write_batch
from services.history.errors import Conflict, DuplicateMessage, HistoryError, NotFound
from services.history.store import Event, Store, Tx
from services.runtime.logging import spawn
from services.runtime.meta import RequestMeta

log = structlog.get_logger("chatbus.history")
MAX_BATCH = 200
RACE_ROUNDS = 3  # a batch of one that raced sees the winner's row on the next round

Outcome = MessageReply | HistoryError
Committed = Callable[[set[str], set[uuid.UUID], list[Event]], Awaitable[None]]


class Marks(Protocol):
    """Published outbox rows waiting to be marked sent (the relay): a batch marks them too."""

    def take_sent(self) -> list[str]:
        """Hand over the rows to mark."""

    def keep_sent(self, msg_ids: Sequence[str]) -> None:
        """Take back rows that were not marked."""


@dataclass
class _Pending:
    req: AppendMessage
    meta: RequestMeta
    answer: "asyncio.Future[MessageReply]"
    # The request's context (its log fields, its trace span): its job is published in it.
    context: contextvars.Context


class AppendBatcher:
    """Write concurrent appends in shared transactions; answer each one on its own."""

    def __init__(
        self,
        store: Store,
        committed: Committed,
        *,
        marks: Marks | None = None,
        lease: float = 10.0,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.store = store
        self.marks = marks
        # After each commit, before the answers: retire cache entries, publish the jobs.
        self.committed = committed
        # How long the relay's timer leaves an admitted job to the publish after the commit.
        self.lease = lease
        self.max_batch = max_batch
        self.batches = 0  # transactions written, for tests and metrics
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def append(self, req: AppendMessage, meta: RequestMeta) -> MessageReply:
        """Store ``req`` with whatever else is waiting; raise its refusal, if any."""
        answer: asyncio.Future[MessageReply] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(req, meta, answer, contextvars.copy_context()))
        if self._writer is None or self._writer.done():
            self._writer = spawn(self._drain(), "history-append-batches")
        # A caller that gives up cancels only its answer: the write goes on (it is idempotent).
        return await answer

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            outcomes: list[Outcome | BaseException]
            try:
                outcomes = list(await self._commit(batch))
            except DuplicateMessage:
                outcomes = [await self._alone(p) for p in batch]
            except Exception as exc:
                for pending in batch:
                    _settle(pending.answer, exc)
                continue
            for pending, outcome in zip(batch, outcomes, strict=True):
                _settle(pending.answer, outcome)

    async def _alone(self, pending: _Pending) -> Outcome | BaseException:
        for _ in range(RACE_ROUNDS):
            try:
                [outcome] = await self._commit([pending])
                return outcome
            except DuplicateMessage:
                continue  # the concurrent writer committed: the next round sees its row
            except Exception as exc:
                return exc
        return Conflict("this message is being stored concurrently; try again")

    async def _commit(self, batch: list[_Pending]) -> list[Outcome]:
        now = utcnow()
        self.batches += 1
        sent = self.marks.take_sent() if self.marks else []
        try:
            async with self.store.write() as tx:
                write = _Write(tx, now, self.lease)
                outcomes = await write.run(batch, sent)
        except BaseException:
            if self.marks:
                self.marks.keep_sent(sent)
            raise
        await self.committed(write.users, write.sessions, write.events)
        if len(batch) > 1:
            log.debug("appends written together", appends=len(batch), stored=len(write.records))
        return outcomes


class _Write:
    """One batch's transaction: read, decide each append in order, write."""

    def __init__(self, tx: Tx, now: datetime, lease: float) -> None:
        self.tx = tx
        self.now = now
        self.lease = lease
        self.records: list[MessageRecord] = []
        self.follows: dict[uuid.UUID, uuid.UUID | None] = {}
        self.added: Counter[uuid.UUID] = Counter()
        self.tails: dict[uuid.UUID, uuid.UUID] = {}
        self.ended: list[uuid.UUID] = []
        self.events: list[Event] = []
        self.users: set[str] = set()
        self.sessions: set[uuid.UUID] = set()

    async def run(self, batch: Sequence[_Pending], sent: Sequence[str]) -> list[Outcome]:
        tx, now = self.tx, self.now
        # Locked in id order, so concurrent batches never wait on each other in a cycle;
        # the locks order appends against a concurrent archive of the session.
        wanted = needs(p.req for p in batch)
        targets, stored, facts = await load_batch(
            tx, {p.req.session_id for p in batch}, {p.req.job_id for p in batch},
            users=wanted.users | wanted.senders, senders=wanted.senders, probed=wanted.probed,
            horizon=now - JOB_HORIZON, since=now - RATE_WINDOW,
        )
        admissions = Admissions(now, targets, facts)
        outcomes: list[Outcome] = []
        for pending in batch:
            req = pending.req
            target = targets.get(req.session_id)
            if target is None or target.user_id != req.user_id:
                outcomes.append(NotFound("no such session"))
            elif (old := stored.get((req.job_id, req.role))) is not None:
                outcomes.append(_repeat(old, req, target.persona, admissions))
            elif req.role == "user" and target.status != "active":
                outcomes.append(Conflict("the session is archived"))
            else:
                try:
                    record, reply = self._store(pending, target.persona, admissions)
                except HistoryError as exc:
                    outcomes.append(exc)
                    continue
                stored[(req.job_id, req.role)] = StoredMessage(record, reply.follows)
                outcomes.append(reply)
        await write_batch(
            tx, self.records, self.follows, self.added, self.tails, self.ended, self.events, sent,
            now,
        )
        return outcomes

    def _store(
        self, pending: _Pending, persona: str, admissions: Admissions
    ) -> tuple[MessageRecord, MessageReply]:
        req = pending.req
        admitted = None
        if req.role == "user":
            admission = req.admission
            assert admission is not None  # the service refuses a user append without one
            admitted = admissions.admit(req, admission)
        else:
            admissions.replied(req)
            self.ended.append(req.job_id)
        # A microsecond apart, in the order admitted: lists read back the admission order.
        at = self.now + timedelta(microseconds=len(self.records))
        record = MessageRecord(
            id=uuid.uuid4(), session_id=req.session_id, user_id=req.user_id, role=req.role,
            content=req.content, created_at=at, job_id=req.job_id,
        )
        self.records.append(record)
        self.added[req.session_id] += 1
        self.users.add(req.user_id)
        self.sessions.add(req.session_id)
        if admitted is None:
            return record, MessageReply(message=record, created=True, persona=persona)
        assert req.admission is not None
        self.follows[record.id] = admitted.follows
        self.tails[req.session_id] = req.job_id
        job = self._job(record, persona, req.admission, admitted.follows, pending.meta)
        self.events.append(replace(job, context=pending.context))
        reply = MessageReply(
            message=record, created=True, persona=persona, follows=admitted.follows,
            interrupted=admitted.interrupted,
        )
        return record, reply

    def _job(
        self,
        record: MessageRecord,
        persona: str,
        admission: Admission,
        follows: uuid.UUID | None,
        meta: RequestMeta,
    ) -> Event:
        """Return the outbox row announcing an admitted job on ``chat.requested``."""
        assert record.job_id is not None
        job = RequestChat(
            job_id=record.job_id, user_id=record.user_id, session_id=record.session_id,
            persona=persona, message_id=record.id, content=record.content,
            created_at=admission.created_at, follows=follows, revision=admission.revision,
        )
        return Event(
            msg_id=str(record.job_id),
            subject=subjects.CHAT_REQUESTED,
            payload=job.model_dump_json(),
            request_id=meta.request_id,
            user_id=meta.user_id,
            created_at=self.now,
            # Published right after the commit; the relay's timer leaves it alone until then.
            claimed_until=self.now + timedelta(seconds=self.lease),
            body=job,
        )


def _repeat(
    old: StoredMessage, req: AppendMessage, persona: str, admissions: Admissions
) -> Outcome:
    """Answer a repeated append with the stored message, or refuse a job id reused elsewhere."""
    existing = old.record
    if existing.session_id != req.session_id or existing.user_id != req.user_id:
        return Conflict("this job already stored a message in another session")
    if req.role != "user":
        return MessageReply(message=existing, created=False, persona=persona)
    again = admissions.repeated(req, old)
    return MessageReply(
        message=existing, created=False, persona=persona, follows=again.follows,
        interrupted=again.interrupted,
    )


def _settle(answer: "asyncio.Future[MessageReply]", outcome: Outcome | BaseException) -> None:
    if answer.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
