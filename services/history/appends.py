"""Group commit of appended messages: appends that arrive together share one transaction.

A burst of chat messages means a burst of appends, and an append alone costs
five statements and a commit. While one batch is being written, the appends
that arrive wait in a queue; the next batch takes them all and writes them with
one statement per kind (lock the sessions, find earlier copies, insert, count).
An append that arrives alone is written at once, as a batch of one.

Each append still gets its own answer: stored, a duplicate of what its job
stored before (also earlier in the same batch), or refused (no such session,
archived). If a concurrent writer elsewhere stored one of the batch's messages
first, the batch rolls back and its appends are written one by one.
"""

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from contracts.base import utcnow
from contracts.history import AppendMessage, MessageRecord, MessageReply
from services.history.errors import Conflict, DuplicateMessage, HistoryError, NotFound
from services.history.store import Store
from services.runtime.logging import spawn

log = structlog.get_logger("chatbus.history")
MAX_BATCH = 200

Outcome = MessageReply | HistoryError
AppendOne = Callable[[AppendMessage], Awaitable[MessageReply]]


@dataclass
class _Pending:
    req: AppendMessage
    answer: "asyncio.Future[MessageReply]"


class AppendBatcher:
    """Write concurrent appends in shared transactions; answer each one on its own."""

    def __init__(self, store: Store, append_one: AppendOne, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.append_one = append_one  # the one-append path, for a batch that raced
        self.max_batch = max_batch
        self.batches = 0  # transactions written, for tests and metrics
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def append(self, req: AppendMessage) -> MessageReply:
        """Store ``req`` with whatever else is waiting; raise its refusal, if any."""
        answer: asyncio.Future[MessageReply] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(req, answer))
        if self._writer is None or self._writer.done():
            self._writer = spawn(self._drain(), "history-append-batches")
        # A caller that gives up cancels only its answer: the write goes on (it is idempotent).
        return await answer

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            outcomes: list[Outcome | BaseException]
            try:
                outcomes = list(await self._write(batch))
            except DuplicateMessage:
                outcomes = [await self._one(p.req) for p in batch]
            except Exception as exc:
                for pending in batch:
                    _settle(pending.answer, exc)
                continue
            for pending, outcome in zip(batch, outcomes, strict=True):
                _settle(pending.answer, outcome)

    async def _one(self, req: AppendMessage) -> Outcome | BaseException:
        try:
            return await self.append_one(req)
        except Exception as exc:
            return exc

    async def _write(self, batch: list[_Pending]) -> list[Outcome]:
        """Write the batch in one transaction; return each append's outcome, in order."""
        now = utcnow()
        self.batches += 1
        async with self.store.write() as tx:
            # Locked in id order, so concurrent batches never wait on each other in a cycle;
            # the locks order appends against a concurrent archive of the session.
            found = await tx.get_sessions({p.req.session_id for p in batch}, lock=True)
            stored = await tx.get_job_messages({(p.req.job_id, p.req.role) for p in batch})
            outcomes: list[Outcome] = []
            new: list[MessageRecord] = []
            counts: Counter[uuid.UUID] = Counter()
            for req in (p.req for p in batch):
                session = found.get(req.session_id)
                if session is None or session.user_id != req.user_id:
                    outcomes.append(NotFound("no such session"))
                elif (old := stored.get((req.job_id, req.role))) is not None:
                    outcomes.append(duplicate(old, req, session.persona))
                elif req.role == "user" and session.status != "active":
                    outcomes.append(Conflict("the session is archived"))
                else:
                    record = MessageRecord(
                        id=uuid.uuid4(), session_id=req.session_id, user_id=req.user_id,
                        role=req.role, content=req.content, created_at=now, job_id=req.job_id,
                    )
                    stored[(req.job_id, req.role)] = record  # a repeat in this batch
                    new.append(record)
                    counts[req.session_id] += 1
                    outcomes.append(
                        MessageReply(message=record, created=True, persona=session.persona)
                    )
            await tx.insert_messages(new)
            await tx.count_messages(counts, now)
        if len(batch) > 1:
            log.debug("appends written together", appends=len(batch), stored=len(new))
        return outcomes


def duplicate(existing: MessageRecord, req: AppendMessage, persona: str) -> Outcome:
    """Answer a repeated append with the stored message, or refuse a job id reused elsewhere."""
    if existing.session_id != req.session_id or existing.user_id != req.user_id:
        return Conflict("this job already stored a message in another session")
    return MessageReply(message=existing, created=False, persona=persona)


def _settle(answer: "asyncio.Future[MessageReply]", outcome: Outcome | BaseException) -> None:
    if answer.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
