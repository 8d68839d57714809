"""Transactional outbox: events are rows written with the change, published by a relay.

A write queues its event in the same transaction (``Tx.add_event``), so a
rolled-back write announces nothing and a committed one is announced even if
the process dies right after the commit. The relay claims pending rows for a
lease (``FOR UPDATE SKIP LOCKED`` on Postgres, so replicas never claim the
same row; SQLite has one writer), publishes them outside any transaction with
their stable ``msg_id`` (JetStream drops a re-publish within the stream's
duplicate window), then marks them sent. A replica that dies after claiming
leaves rows whose lease runs out and another replica takes them.
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy import delete, or_, select, update

from contracts import subjects
from contracts.base import Contract, utcnow
from contracts.history import SessionRecord
from contracts.sessions import SessionArchived, SessionDeleted
from services.history.models import outbox
from services.history.store import Store
from services.runtime.logging import spawn
from services.runtime.meta import RequestMeta

log = structlog.get_logger("chatbus.history.outbox")

EVENT_TYPES: dict[str, type[Contract]] = {
    subjects.SESSION_ARCHIVED: SessionArchived,
    subjects.SESSION_DELETED: SessionDeleted,
}
BATCH = 100
LEASE = timedelta(seconds=30)
PRUNE_EVERY = 60.0


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

    def wake(self) -> None:
        """Ask the relay to publish now (called after a commit that queued events)."""
        self._wake.set()

    def start(self) -> None:
        """Run the relay in the background until :meth:`stop`."""
        if self._task is None:
            self._task = spawn(self._run(), "history-outbox-relay")

    async def stop(self) -> None:
        """Stop the background relay."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

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
        async with self.store.write() as tx:
            result = await tx.conn.execute(
                delete(outbox).where(outbox.c.sent_at < utcnow() - self.retention)
            )
        return int(result.rowcount or 0)

    async def _claim(self) -> list[Pending]:
        now = utcnow()
        async with self.store.write() as tx:
            query = (
                select(outbox)
                .where(
                    outbox.c.sent_at.is_(None),
                    or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
                )
                .order_by(outbox.c.seq)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
            rows = (await tx.conn.execute(query)).mappings().all()
            if rows:
                await tx.conn.execute(
                    update(outbox)
                    .where(outbox.c.seq.in_([row["seq"] for row in rows]))
                    .values(claimed_until=now + self.lease)
                )
        return [Pending(**{k: row[k] for k in Pending.__dataclass_fields__}) for row in rows]

    async def _publish(self, rows: list[Pending]) -> list[int]:
        sent: list[int] = []
        error: str | None = None
        for row in rows:
            try:
                body = EVENT_TYPES[row.subject].model_validate_json(row.payload)
                await self.publisher.publish(
                    row.subject,
                    body,
                    RequestMeta(request_id=row.request_id, user_id=row.user_id),
                    stream=subjects.SESSION_EVENTS_STREAM.name,
                    msg_id=row.msg_id,
                    timeout=self.publish_timeout,
                )
            except Exception as exc:  # whatever the bus raised, the row waits for the next tick
                error = repr(exc)[:2000]
                break
            sent.append(row.seq)
        await self._finish(sent, [r.seq for r in rows if r.seq not in sent], error)
        if error is not None and not self._failing:
            log.warning("outbox events not published; will retry", error=error)
        elif error is None and self._failing:
            log.info("outbox events published again")
        self._failing = error is not None
        return sent

    async def _finish(self, sent: list[int], unsent: list[int], error: str | None) -> None:
        now = utcnow()
        async with self.store.write() as tx:
            if sent:
                await tx.conn.execute(
                    update(outbox).where(outbox.c.seq.in_(sent)).values(sent_at=now)
                )
            if unsent:
                # Released at once, so the next tick retries instead of waiting out the lease.
                values: dict[str, Any] = {"claimed_until": None}
                if error is not None:
                    values.update(attempts=outbox.c.attempts + 1, last_error=error)
                await tx.conn.execute(update(outbox).where(outbox.c.seq.in_(unsent)).values(values))


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
