"""Persistence of sessions, messages and outbox rows: queries only, no rules.

The statements of the request path are built once, here, with bound parameters
(``expanding`` for lists), so each execution reuses SQLAlchemy's compiled form and
the driver's prepared statement; rows are read as tuples, not mappings.
"""

import asyncio
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Select,
    Uuid,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.base import Contract
from contracts.history import MessageRecord, Role, SessionRecord, SessionStatus
from services.history.errors import ActiveSessionExists, DuplicateMessage
from services.history.models import DATABASE, messages, outbox, sessions
from services.runtime.cursor import Position
from services.runtime.database import UTCDateTime

SESSION_COLUMNS = (
    sessions.c.id, sessions.c.user_id, sessions.c.persona, sessions.c.title, sessions.c.status,
    sessions.c.created_at, sessions.c.updated_at, sessions.c.archived_at,
    sessions.c.message_count,
)
MESSAGE_COLUMNS = (
    messages.c.id, messages.c.session_id, messages.c.user_id, messages.c.role,
    messages.c.content, messages.c.created_at, messages.c.job_id,
)
USER_MESSAGE = messages.c.role == "user"
UNFINISHED = and_(USER_MESSAGE, messages.c.job_ended_at.is_(None))
_tail = messages.alias("tail")

# The sessions a batch of appends writes to, locked in id order, with the state of the job
# each one's order ends with (its tail): when its user message was stored, and whether ended.
LOCK_TARGETS = (
    select(
        sessions.c.id, sessions.c.user_id, sessions.c.persona, sessions.c.status,
        sessions.c.tail_job_id, _tail.c.created_at, _tail.c.job_ended_at,
    )
    .select_from(
        sessions.outerjoin(
            _tail, and_(_tail.c.job_id == sessions.c.tail_job_id, _tail.c.role == "user")
        )
    )
    .where(sessions.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(sessions.c.id)
    .with_for_update(of=sessions)
)
JOB_MESSAGES = select(*MESSAGE_COLUMNS, messages.c.follows).where(
    messages.c.job_id.in_(bindparam("jobs", expanding=True))
)
# What admitting new jobs needs to know, in one round trip: each user's unfinished jobs
# (``u``), the user messages each user sent within the rate window (``r``), and each
# probed session's unfinished jobs (``s``). Partial indexes keep all three short.
_AT = bindparam("guard", type_=UTCDateTime)
ADMISSION_FACTS = union_all(
    select(
        literal("u"), messages.c.user_id, cast(null(), Uuid), messages.c.job_id,
        messages.c.created_at,
    ).where(
        messages.c.user_id.in_(bindparam("users", expanding=True)), UNFINISHED,
        messages.c.created_at > _AT,
    ),
    select(
        literal("r"), messages.c.user_id, cast(null(), Uuid), messages.c.job_id,
        messages.c.created_at,
    ).where(
        messages.c.user_id.in_(bindparam("senders", expanding=True)), USER_MESSAGE,
        messages.c.created_at > bindparam("since", type_=UTCDateTime),
    ),
    select(
        literal("s"), messages.c.user_id, messages.c.session_id, messages.c.job_id,
        messages.c.created_at,
    ).where(
        messages.c.session_id.in_(bindparam("probed", expanding=True)), UNFINISHED,
        messages.c.created_at > _AT,
    ),
)
SESSION_UNFINISHED = (
    select(messages.c.job_id)
    .where(
        messages.c.session_id == bindparam("sid"), UNFINISHED,
        messages.c.created_at > bindparam("guard", type_=UTCDateTime),
    )
    .order_by(messages.c.created_at)
)
INSERT_MESSAGES = insert(messages)
ADVANCE_SESSIONS = (
    update(sessions)
    .where(sessions.c.id == bindparam("sid"))
    .values(
        message_count=sessions.c.message_count + bindparam("added"),
        updated_at=bindparam("at", type_=UTCDateTime),
        tail_job_id=func.coalesce(bindparam("tail", type_=Uuid), sessions.c.tail_job_id),
    )
)
END_JOBS = (
    update(messages)
    .where(messages.c.job_id.in_(bindparam("jobs", expanding=True)), UNFINISHED)
    .values(job_ended_at=bindparam("at", type_=UTCDateTime))
)
# Ending an ended job keeps its first end: the row matches either way, so it says "known".
END_JOB = (
    update(messages)
    .where(
        messages.c.job_id == bindparam("job"), USER_MESSAGE,
        messages.c.user_id == bindparam("user"),
    )
    .values(
        job_ended_at=func.coalesce(messages.c.job_ended_at, bindparam("at", type_=UTCDateTime))
    )
)
INSERT_EVENTS = insert(outbox)
# Serialises the admissions of a user across replicas on Postgres (one lock per user, taken
# in key order so two batches never wait on each other in a cycle); SQLite has one writer.
LOCK_USERS = text(
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended("
    "'history.user:' || u, 0) AS k FROM unnest(CAST(:users AS text[])) AS u ORDER BY k) AS keys"
)


@dataclass(frozen=True, slots=True)
class Target:
    """A session a batch of appends writes to, as locked."""

    id: UUID
    user_id: str
    persona: str
    status: str
    tail_job_id: UUID | None
    tail_created_at: datetime | None  # of the tail job's user message
    tail_ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored, with the job its job follows (user messages)."""

    record: MessageRecord
    follows: UUID | None


@dataclass(frozen=True, slots=True)
class Facts:
    """What admission reads: unfinished jobs per user and session, recent sends per user."""

    unfinished: dict[str, set[UUID]]
    sent: dict[str, list[datetime]]
    session_jobs: dict[UUID, dict[UUID, datetime]]


@dataclass(frozen=True, slots=True)
class Event:
    """An outbox row to insert; ``body`` is the model its payload was made from (not stored)."""

    msg_id: str
    subject: str
    payload: str
    request_id: str
    user_id: str | None
    created_at: datetime
    claimed_until: datetime | None = None
    body: Contract | None = None


class Store:
    """Open read or write transactions on the history database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer at a time. Writers of this process take turns here, where
        # waiting costs nothing, instead of in SQLite's busy handler, which sleeps and
        # retries: under 50 concurrent appends that cut throughput from ~115/s to ~35/s.
        self._turn = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @asynccontextmanager
    async def read(self) -> AsyncIterator["Tx"]:
        """Run queries in one read transaction."""
        async with self.engine.begin() as conn:
            yield Tx(conn, self.postgres)

    @asynccontextmanager
    async def write(self) -> AsyncIterator["Tx"]:
        """Run queries in one write transaction, committed when the block exits cleanly."""
        async with self._turn or nullcontext(), self.engine.connect() as conn:
            conn = await conn.execution_options(**{DATABASE.write_option: True})
            async with conn.begin():
                yield Tx(conn, self.postgres)


class Tx:
    """The queries of one transaction."""

    def __init__(self, conn: AsyncConnection, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres

    async def get_session(self, session_id: UUID, *, lock: bool = False) -> SessionRecord | None:
        """Return a session by id; ``lock`` holds its row until the transaction ends."""
        query = select(*SESSION_COLUMNS).where(sessions.c.id == session_id)
        if lock:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).first()
        return _session(row) if row else None

    async def lock_persona(self, user_id: str, persona: str) -> None:
        """Hold a lock on the user's persona until the transaction ends (Postgres only)."""
        if self.postgres:
            key = func.hashtextextended(f"history.session:{user_id}:{persona}", 0)
            await self.conn.execute(select(func.pg_advisory_xact_lock(key)))
        # SQLite write transactions begin IMMEDIATE: they are serialised already.

    async def archive_active(self, user_id: str, persona: str, at: datetime) -> list[SessionRecord]:
        """Archive the user's active sessions with the persona and return them."""
        query = (
            update(sessions)
            .where(
                sessions.c.user_id == user_id,
                sessions.c.persona == persona,
                sessions.c.status == "active",
            )
            .values(status="archived", archived_at=at, updated_at=at)
            .returning(*SESSION_COLUMNS)
        )
        return [_session(row) for row in (await self.conn.execute(query)).all()]

    async def archive_session(self, session_id: UUID, at: datetime) -> SessionRecord:
        """Archive one session and return it as stored."""
        query = (
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(status="archived", archived_at=at, updated_at=at)
            .returning(*SESSION_COLUMNS)
        )
        return _session((await self.conn.execute(query)).one())

    async def delete_session(self, session_id: UUID) -> bool:
        """Delete a session; its messages go with it (foreign key cascade)."""
        result = await self.conn.execute(delete(sessions).where(sessions.c.id == session_id))
        return bool(result.rowcount)

    async def add_events(self, events: Sequence[Event]) -> None:
        """Queue events in the outbox; they commit or roll back with the transaction."""
        if events:
            rows = [
                {
                    "msg_id": e.msg_id, "subject": e.subject, "payload": e.payload,
                    "request_id": e.request_id, "user_id": e.user_id,
                    "created_at": e.created_at, "claimed_until": e.claimed_until,
                }
                for e in events
            ]
            await self.conn.execute(INSERT_EVENTS, rows)

    async def insert_session(self, record: SessionRecord) -> None:
        """Insert a session, or raise :class:`ActiveSessionExists` on a concurrent create."""
        try:
            await self.conn.execute(insert(sessions).values(**_columns(record)))
        except IntegrityError as exc:
            raise ActiveSessionExists(record.user_id, record.persona) from exc

    async def list_sessions(
        self,
        user_id: str,
        *,
        status: SessionStatus | None,
        persona: str | None,
        after: Position | None,
        limit: int,
    ) -> list[SessionRecord]:
        """Return up to ``limit`` sessions older than ``after``, newest first."""
        query = select(*SESSION_COLUMNS).where(sessions.c.user_id == user_id)
        if status is not None:
            query = query.where(sessions.c.status == status)
        if persona is not None:
            query = query.where(sessions.c.persona == persona)
        query = _page(query, sessions.c, after, limit)
        return [_session(row) for row in (await self.conn.execute(query)).all()]

    async def lock_targets(self, session_ids: Collection[UUID]) -> dict[UUID, Target]:
        """Lock the sessions of these ids that exist, in id order; return them with their tail."""
        rows = (await self.conn.execute(LOCK_TARGETS, {"ids": list(session_ids)})).all()
        return {row[0]: Target(*row) for row in rows}

    async def job_messages(
        self, job_ids: Collection[UUID]
    ) -> dict[tuple[UUID, Role], StoredMessage]:
        """Return the messages these jobs stored, by (job id, role)."""
        rows = (await self.conn.execute(JOB_MESSAGES, {"jobs": list(job_ids)})).all()
        return {(row[6], row[3]): StoredMessage(_message(row), row[7]) for row in rows}

    async def lock_users(self, user_ids: Collection[str]) -> None:
        """Hold each user's admission lock until the transaction ends (Postgres only)."""
        if self.postgres and user_ids:
            await self.conn.execute(LOCK_USERS, {"users": sorted(user_ids)})

    async def admission_facts(
        self,
        users: Collection[str],
        senders: Collection[str],
        probed: Collection[UUID],
        *,
        horizon: datetime,
        since: datetime,
    ) -> Facts:
        """Read the unfinished jobs (created after ``horizon``) of ``users`` and of the
        ``probed`` sessions, and the user messages ``senders`` sent after ``since``."""
        facts = Facts({u: set() for u in users}, {u: [] for u in senders}, {s: {} for s in probed})
        params = {
            "users": list(users), "senders": list(senders), "probed": list(probed),
            "guard": horizon, "since": since,
        }
        for kind, user_id, session_id, job_id, created_at in (
            await self.conn.execute(ADMISSION_FACTS, params)
        ).all():
            if kind == "u":
                facts.unfinished[user_id].add(job_id)
            elif kind == "r":
                facts.sent[user_id].append(created_at)
            else:
                facts.session_jobs[session_id][job_id] = created_at
        return facts

    async def session_unfinished(self, session_id: UUID, horizon: datetime) -> list[UUID]:
        """Return the session's unfinished jobs created after ``horizon``, oldest first."""
        params = {"sid": session_id, "guard": horizon}
        return list((await self.conn.execute(SESSION_UNFINISHED, params)).scalars().all())

    async def insert_messages(
        self, records: Sequence[MessageRecord], follows: Mapping[UUID, UUID | None]
    ) -> None:
        """Insert messages (a user message with the job it follows, by message id);
        raise :class:`DuplicateMessage` if any (job, role) exists."""
        if not records:
            return
        rows = [
            {
                "id": r.id, "session_id": r.session_id, "user_id": r.user_id, "role": r.role,
                "content": r.content, "created_at": r.created_at, "job_id": r.job_id,
                "follows": follows.get(r.id), "job_ended_at": None,
            }
            for r in records
        ]
        try:
            await self.conn.execute(INSERT_MESSAGES, rows)
        except IntegrityError as exc:
            raise DuplicateMessage(records[0].job_id, records[0].role) from exc

    async def advance_sessions(
        self, added: Mapping[UUID, int], tails: Mapping[UUID, UUID], at: datetime
    ) -> None:
        """Add each session's new messages to its count, move ``updated_at`` and its tail."""
        if added:
            rows = [
                {"sid": sid, "added": n, "at": at, "tail": tails.get(sid)}
                for sid, n in sorted(added.items())
            ]
            await self.conn.execute(ADVANCE_SESSIONS, rows)

    async def end_jobs(self, job_ids: Iterable[UUID], at: datetime) -> None:
        """Mark the jobs of these ids ended (their user message), unless ended already."""
        jobs = list(job_ids)
        if jobs:
            await self.conn.execute(END_JOBS, {"jobs": jobs, "at": at})

    async def end_job(self, user_id: str, job_id: UUID, at: datetime) -> bool:
        """Mark one of the user's jobs ended (kept if it was); tell whether it exists."""
        result = await self.conn.execute(END_JOB, {"job": job_id, "user": user_id, "at": at})
        return bool(result.rowcount)

    async def list_messages(
        self, session_id: UUID, *, after: Position | None, limit: int
    ) -> list[MessageRecord]:
        """Return up to ``limit`` messages of a session older than ``after``, newest first."""
        query = _page(
            select(*MESSAGE_COLUMNS).where(messages.c.session_id == session_id),
            messages.c, after, limit,
        )
        return [_message(row) for row in (await self.conn.execute(query)).all()]

    async def list_feed(
        self, user_id: str, *, after: Position | None, limit: int
    ) -> list[MessageRecord]:
        """Return up to ``limit`` of the user's messages older than ``after``, newest first."""
        query = _page(
            select(*MESSAGE_COLUMNS).where(messages.c.user_id == user_id), messages.c, after, limit
        )
        return [_message(row) for row in (await self.conn.execute(query)).all()]

    async def search_messages(self, user_id: str, text: str, limit: int) -> list[MessageRecord]:
        """Return up to ``limit`` of the user's messages containing ``text``, newest first."""
        query = (
            select(*MESSAGE_COLUMNS)
            .where(messages.c.user_id == user_id)
            .where(func.lower(messages.c.content).contains(text.lower(), autoescape=True))
        )
        query = _page(query, messages.c, None, limit)
        return [_message(row) for row in (await self.conn.execute(query)).all()]


def _page(query: Select[Any], columns: Any, after: Position | None, limit: int) -> Select[Any]:
    """Order newest first and keep the rows strictly after the cursor position."""
    if after is not None:
        # A row-value comparison is an index bound on both backends, so a deep page
        # starts at the cursor instead of filtering every newer row.
        query = query.where(
            tuple_(columns.created_at, columns.id) < (after.created_at, after.id)
        )
    return query.order_by(columns.created_at.desc(), columns.id.desc()).limit(limit)


def _columns(record: SessionRecord) -> dict[str, Any]:
    return record.model_dump(exclude={"schema_version"})


def _session(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        id=row[0], user_id=row[1], persona=row[2], title=row[3], status=row[4],
        created_at=row[5], updated_at=row[6], archived_at=row[7], message_count=row[8],
    )


def _message(row: Sequence[Any]) -> MessageRecord:
    return MessageRecord(
        id=row[0], session_id=row[1], user_id=row[2], role=row[3], content=row[4],
        created_at=row[5], job_id=row[6],
    )
