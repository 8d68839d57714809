"""Persistence of sessions and messages: queries only, no rules."""

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Select, delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.history import MessageRecord, Role, SessionRecord, SessionStatus
from services.history.errors import ActiveSessionExists, DuplicateMessage
from services.history.models import DATABASE, messages, outbox, sessions
from services.runtime.cursor import Position


class Store:
    """Open read or write transactions on the history database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite has one writer at a time. Writers of this process take turns here, where
        # waiting costs nothing, instead of in SQLite's busy handler, which sleeps and
        # retries: under 50 concurrent appends that cut throughput from ~115/s to ~35/s.
        self._turn = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @asynccontextmanager
    async def read(self) -> AsyncIterator["Tx"]:
        """Run queries in one read transaction."""
        async with self.engine.begin() as conn:
            yield Tx(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator["Tx"]:
        """Run queries in one write transaction, committed when the block exits cleanly."""
        async with self._turn or nullcontext(), self.engine.connect() as conn:
            conn = await conn.execution_options(**{DATABASE.write_option: True})
            async with conn.begin():
                yield Tx(conn)


class Tx:
    """The queries of one transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get_session(self, session_id: UUID, *, lock: bool = False) -> SessionRecord | None:
        """Return a session by id; ``lock`` holds its row until the transaction ends."""
        query = select(sessions).where(sessions.c.id == session_id)
        if lock:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).mappings().first()
        return _session(row) if row else None

    async def lock_persona(self, user_id: str, persona: str) -> None:
        """Hold a lock on the user's persona until the transaction ends (Postgres only)."""
        if self.conn.dialect.name == "postgresql":
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
            .returning(*sessions.c)
        )
        rows = (await self.conn.execute(query)).mappings().all()
        return [_session(row) for row in rows]

    async def archive_session(self, session_id: UUID, at: datetime) -> SessionRecord:
        """Archive one session and return it as stored."""
        query = (
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(status="archived", archived_at=at, updated_at=at)
            .returning(*sessions.c)
        )
        return _session((await self.conn.execute(query)).mappings().one())

    async def delete_session(self, session_id: UUID) -> bool:
        """Delete a session; its messages go with it (foreign key cascade)."""
        result = await self.conn.execute(delete(sessions).where(sessions.c.id == session_id))
        return bool(result.rowcount)

    async def add_event(
        self, msg_id: str, subject: str, payload: str, request_id: str, user_id: str | None,
        at: datetime,
    ) -> None:
        """Queue an event in the outbox; it commits or rolls back with the transaction."""
        await self.conn.execute(
            insert(outbox).values(
                msg_id=msg_id,
                subject=subject,
                payload=payload,
                request_id=request_id,
                user_id=user_id,
                created_at=at,
            )
        )

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
        query = select(sessions).where(sessions.c.user_id == user_id)
        if status is not None:
            query = query.where(sessions.c.status == status)
        if persona is not None:
            query = query.where(sessions.c.persona == persona)
        query = _page(query, sessions.c, after, limit)
        rows = (await self.conn.execute(query)).mappings().all()
        return [_session(row) for row in rows]

    async def get_message(self, job_id: UUID, role: Role) -> MessageRecord | None:
        """Return the message a job stored with the role, if any."""
        query = select(messages).where(messages.c.job_id == job_id, messages.c.role == role)
        row = (await self.conn.execute(query)).mappings().first()
        return _message(row) if row else None

    async def insert_message(self, record: MessageRecord) -> None:
        """Insert a message, or raise :class:`DuplicateMessage` if its (job, role) exists."""
        try:
            await self.conn.execute(insert(messages).values(**_columns(record)))
        except IntegrityError as exc:
            raise DuplicateMessage(record.job_id, record.role) from exc

    async def get_sessions(
        self, session_ids: Collection[UUID], *, lock: bool = False
    ) -> dict[UUID, SessionRecord]:
        """Return the sessions of these ids that exist; ``lock`` holds their rows, in id order."""
        query = select(sessions).where(sessions.c.id.in_(session_ids)).order_by(sessions.c.id)
        if lock:
            query = query.with_for_update()
        rows = (await self.conn.execute(query)).mappings().all()
        return {row["id"]: _session(row) for row in rows}

    async def get_job_messages(
        self, keys: Collection[tuple[UUID, Role]]
    ) -> dict[tuple[UUID, Role], MessageRecord]:
        """Return the messages stored under these (job id, role) pairs."""
        query = select(messages).where(tuple_(messages.c.job_id, messages.c.role).in_(keys))
        rows = (await self.conn.execute(query)).mappings().all()
        found = (_message(row) for row in rows)
        return {(m.job_id, m.role): m for m in found if m.job_id is not None}

    async def insert_messages(self, records: Sequence[MessageRecord]) -> None:
        """Insert messages; raise :class:`DuplicateMessage` if any (job, role) exists."""
        if not records:
            return
        try:
            await self.conn.execute(insert(messages), [_columns(r) for r in records])
        except IntegrityError as exc:
            raise DuplicateMessage(records[0].job_id, records[0].role) from exc

    async def count_messages(self, counts: Mapping[UUID, int], at: datetime) -> None:
        """Add each session's new messages to its count and move its ``updated_at``."""
        for session_id, added in sorted(counts.items()):
            await self.conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id)
                .values(message_count=sessions.c.message_count + added, updated_at=at)
            )

    async def count_message(self, session_id: UUID, at: datetime) -> None:
        """Add one to the session's message count and move its ``updated_at``."""
        await self.conn.execute(
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(message_count=sessions.c.message_count + 1, updated_at=at)
        )

    async def list_messages(
        self, session_id: UUID, *, after: Position | None, limit: int
    ) -> list[MessageRecord]:
        """Return up to ``limit`` messages of a session older than ``after``, newest first."""
        query = _page(
            select(messages).where(messages.c.session_id == session_id), messages.c, after, limit
        )
        rows = (await self.conn.execute(query)).mappings().all()
        return [_message(row) for row in rows]


    async def list_feed(
        self, user_id: str, *, after: Position | None, limit: int
    ) -> list[MessageRecord]:
        """Return up to ``limit`` of the user's messages older than ``after``, newest first."""
        query = _page(
            select(messages).where(messages.c.user_id == user_id), messages.c, after, limit
        )
        rows = (await self.conn.execute(query)).mappings().all()
        return [_message(row) for row in rows]

    async def search_messages(self, user_id: str, text: str, limit: int) -> list[MessageRecord]:
        """Return up to ``limit`` of the user's messages containing ``text``, newest first."""
        query = (
            select(messages)
            .where(messages.c.user_id == user_id)
            .where(func.lower(messages.c.content).contains(text.lower(), autoescape=True))
        )
        query = _page(query, messages.c, None, limit)
        rows = (await self.conn.execute(query)).mappings().all()
        return [_message(row) for row in rows]


def _page(query: Select[Any], columns: Any, after: Position | None, limit: int) -> Select[Any]:
    """Order newest first and keep the rows strictly after the cursor position."""
    if after is not None:
        # A row-value comparison is an index bound on both backends, so a deep page
        # starts at the cursor instead of filtering every newer row.
        query = query.where(
            tuple_(columns.created_at, columns.id) < (after.created_at, after.id)
        )
    return query.order_by(columns.created_at.desc(), columns.id.desc()).limit(limit)


def _columns(record: SessionRecord | MessageRecord) -> dict[str, Any]:
    return record.model_dump(exclude={"schema_version"})


def _session(row: Any) -> SessionRecord:
    return SessionRecord.model_validate(dict(row))


def _message(row: Any) -> MessageRecord:
    return MessageRecord.model_validate(dict(row))
