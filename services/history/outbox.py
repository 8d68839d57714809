"""Transactional outbox: events are rows written with the change, published by a relay.

A write queues its event in the same transaction (``Tx.add_events``), so a
rolled-back write announces nothing and a committed one is announced even if
the process dies right after the commit. Two ways out:

- **at once** (admitted chat jobs): the append inserts its rows already leased
  to itself and, right after the commit, hands them to :meth:`Relay.announce`,
  which publishes them from memory and marks them sent later, many per
  transaction. No claim round, no wait on a timer.
- **claimed** (session events after a wake, and anything left behind): the
  relay claims pending rows whose lease is free or ran out (``FOR UPDATE SKIP
  LOCKED`` on Postgres, so replicas never claim the same row; SQLite has one
  writer), publishes them outside any transaction, then marks them sent. A
  replica that dies after a commit, or after claiming, leaves rows whose lease
  runs out and any relay takes them on its timer.

Every row is published with its stable ``msg_id``: JetStream drops a re-publish
within the stream's duplicate window. Where each subject goes, and as what, is
:data:`ROUTES`.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from contracts import subjects
from contracts.base import Contract, utcnow
from contracts.chat import RequestChat
from contracts.history import SessionRecord
from contracts.sessions import SessionArchived, SessionDeleted
from services.history.statements import (
    CLAIM,
    FAILED_SEQS,
    MARK_SENT,
    PRUNE,
    RELEASE,
    RELEASE_SEQS,
    SENT_SEQS,
)
from services.history.store import Event, Store
from services.runtime.logging import spawn
from services.runtime.meta import RequestMeta

log = structlog.get_logger("chatbus.history.outbox")

# Each subject the outbox carries: the stream that stores it and the model of its payload.
ROUTES: dict[str, tuple[str, type[Contract]]] = {
    subjects.SESSION_ARCHIVED: (subjects.SESSION_EVENTS_STREAM.name, SessionArchived),
    subjects.SESSION_DELETED: (subjects.SESSION_EVENTS_STREAM.name, SessionDeleted),
    subjects.CHAT_REQUESTED: (subjects.CHAT_JOBS_STREAM.name, RequestChat),
}
BATCH = 100
LEASE = timedelta(seconds=30)
PRUNE_EVERY = 60.0
# Rows published at once are marked sent by the next append's transaction, or after this
# long without one, many together.
MARK_DELAY = 0.2



class Publisher(Protocol):
    """Where events go (``BusClient`` in the service, a list in tests)."""

    async def publish(
        self,
        subject: str,
        body: Contract,
        meta: RequestMeta,
        *,
        stream: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish ``body``; with ``stream``, wait until JetStream stored it."""


@dataclass(frozen=True)
class Pending:
    """One claimed outbox row."""

    seq: int
    msg_id: str
    subject: str
    payload: str
    request_id: str
    user_id: str | None


class Relay:
    """Publish pending outbox rows after each commit (``wake``) and on a timer."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        *,
        interval: float = 2.0,
        publish_timeout: float = 2.0,
        retention: timedelta = timedelta(days=1),
        lease: timedelta = LEASE,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.interval = interval
        self.publish_timeout = publish_timeout
        self.retention = retention
        self.lease = lease
        self._wake = asyncio.Event()
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._announcing: set[asyncio.Task[None]] = set()
        self._sent: list[str] = []  # published at once, not yet marked
        self._unsent: list[tuple[str, str]] = []  # (msg_id, error): left to the timer
        self._marks = asyncio.Event()
        self._marker: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Ask the relay to publish now (called after a commit that queued events)."""
        self._wake.set()

    def announce(self, events: Sequence[Event]) -> None:
        """Publish events committed just now, from memory, without waiting for them.

        Their rows were inserted leased, so no claim takes them meanwhile; they are
        marked sent in the background (or released for the timer when a publish failed).
        """
        if not events:
            return
        task = spawn(self._announce(events), "history-outbox-announce")
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    def start(self) -> None:
        """Run the relay in the background until :meth:`stop`."""
        if self._task is None:
            self._task = spawn(self._run(), "history-outbox-relay")
            self._marker = spawn(self._mark_loop(), "history-outbox-marks")

    async def stop(self) -> None:
        """Stop the background relay, after the announcements in flight and their marks."""
        await self.settle()
        for task in (self._task, self._marker):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._marker = None

    async def settle(self) -> None:
        """Wait for the announcements in flight now, then record their outcome (stop, tests)."""
        if self._announcing:
            await asyncio.gather(*list(self._announcing), return_exceptions=True)
        await self.flush_marks()

    async def _announce(self, events: Sequence[Event]) -> None:
        loop = asyncio.get_running_loop()
        # Each in the context of the request that caused it: its trace continues there.
        outcomes = await asyncio.gather(
            *(
                loop.create_task(
                    self._send(e.subject, e.body, e.payload, e.request_id, e.user_id, e.msg_id),
                    context=e.context,
                )
                for e in events
            ),
            return_exceptions=True,
        )
        error: str | None = None
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                error = repr(outcome)[:2000]
                self._unsent.append((event.msg_id, error))
            else:
                self._sent.append(event.msg_id)
        self._note(error)
        self._marks.set()

    def take_sent(self) -> list[str]:
        """Hand over the published rows not yet marked, for a transaction to mark them sent."""
        sent, self._sent = self._sent, []
        return sent

    def keep_sent(self, msg_ids: Sequence[str]) -> None:
        """Take back rows a transaction did not mark after all (it rolled back)."""
        self._sent.extend(msg_ids)

    async def _mark_loop(self) -> None:
        while True:
            await self._marks.wait()
            await asyncio.sleep(MARK_DELAY)  # let more announcements join the transaction
            self._marks.clear()
            try:
                await self.flush_marks()
            except Exception:
                log.exception("outbox rows not marked; the timer will publish them again")

    async def flush_marks(self) -> None:
        """Mark the rows announced since the last call sent; release those that failed."""
        sent, self._sent = self._sent, []
        unsent, self._unsent = self._unsent, []
        if not sent and not unsent:
            return
        now = utcnow()
        async with self.store.sql.write() as tx:
            if sent:
                await tx.execute(MARK_SENT, sent, now)
            if unsent:
                # Released at once, so the next tick retries instead of waiting out the lease.
                await tx.executemany(RELEASE, unsent)
        if unsent:
            self.wake()

    async def _send(
        self,
        subject: str,
        body: Contract | None,
        payload: str,
        request_id: str,
        user_id: str | None,
        msg_id: str,
    ) -> None:
        stream, model = ROUTES[subject]
        await self.publisher.publish(
            subject,
            body if body is not None else model.model_validate_json(payload),
            RequestMeta(request_id=request_id, user_id=user_id),
            stream=stream,
            msg_id=msg_id,
            timeout=self.publish_timeout,
        )

    def _note(self, error: str | None) -> None:
        """Log once per bus outage, and once when publishing works again."""
        if error is not None and not self._failing:
            log.warning("outbox events not published; will retry", error=error)
        elif error is None and self._failing:
            log.info("outbox events published again")
        self._failing = error is not None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pruned_at = loop.time()
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.drain()
                if loop.time() - pruned_at > PRUNE_EVERY:
                    pruned_at = loop.time()
                    await self.prune()
            except Exception:
                # The database is away; the timer tries again.
                log.exception("outbox relay failed")

    async def drain(self) -> int:
        """Publish pending rows until none is left or the bus fails; return how many."""
        published = 0
        while True:
            rows = await self._claim()
            if not rows:
                return published
            sent = await self._publish(rows)
            published += len(sent)
            if len(sent) < len(rows) or len(rows) < BATCH:
                return published

    async def prune(self) -> int:
        """Delete rows sent longer ago than the retention."""
        async with self.store.sql.write() as tx:
            return await tx.execute(PRUNE, utcnow() - self.retention)

    async def _claim(self) -> list[Pending]:
        now = utcnow()
        async with self.store.sql.write() as tx:
            rows = await tx.fetch(CLAIM, now, now + self.lease, BATCH)
        return sorted((Pending(*row) for row in rows), key=lambda p: p.seq)

    async def _publish(self, rows: list[Pending]) -> list[int]:
        sent: list[int] = []
        error: str | None = None
        for row in rows:
            try:
                await self._send(
                    row.subject, None, row.payload, row.request_id, row.user_id, row.msg_id
                )
            except Exception as exc:  # whatever the bus raised, the row waits for the next tick
                error = repr(exc)[:2000]
                break
            sent.append(row.seq)
        await self._finish(sent, [r.seq for r in rows if r.seq not in sent], error)
        self._note(error)
        return sent

    async def _finish(self, sent: list[int], unsent: list[int], error: str | None) -> None:
        async with self.store.sql.write() as tx:
            if sent:
                await tx.execute(SENT_SEQS, sent, utcnow())
            if unsent and error is None:
                await tx.execute(RELEASE_SEQS, unsent)
            elif unsent:
                # Released at once, so the next tick retries instead of waiting out the lease.
                await tx.execute(FAILED_SEQS, unsent, error)


def archived_event(session: SessionRecord) -> tuple[str, str, Contract]:
    """Return (msg_id, subject, event) announcing an archived session."""
    assert session.archived_at is not None
    event = SessionArchived(
        session_id=session.id,
        user_id=session.user_id,
        persona=session.persona,
        archived_at=session.archived_at,
    )
    return f"{session.id}.archived", subjects.SESSION_ARCHIVED, event


def deleted_event(session: SessionRecord, at: datetime) -> tuple[str, str, Contract]:
    """Return (msg_id, subject, event) announcing a deleted session."""
    event = SessionDeleted(session_id=session.id, user_id=session.user_id, deleted_at=at)
    return f"{session.id}.deleted", subjects.SESSION_DELETED, event
