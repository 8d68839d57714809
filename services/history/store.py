"""Persistence of sessions, messages and outbox rows: queries only, no rules.

Every statement is written once below as a template of :mod:`services.runtime.sql`
(asyncpg on Postgres, sqlite3 threads on SQLite); the tables themselves are
declared in :mod:`services.history.models` and created by its migrations.
"""

import contextvars
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.base import Contract
from contracts.history import MessageRecord, SessionRecord, SessionStatus
from services.history.errors import ActiveSessionExists
from services.history.statements import (
    ARCHIVE,
    ARCHIVE_ACTIVE,
    DELETE_SESSION,
    END_JOB,
    GET_SESSION,
    INSERT_EVENT,
    INSERT_SESSION,
    LOCK_PERSONA,
    LOCK_SESSION,
    MESSAGE,
    NEWEST_FIRST,
    SEARCH,
    SESSION,
    SESSION_UNFINISHED,
)
from services.runtime.cursor import Position
from services.runtime.sql import IntegrityError, Row, Sql, maybe_time, maybe_uuid, time_of, uuid_of
from services.runtime.sql import Tx as SqlTx


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
    # The context of the request that caused it (log fields, trace span), to publish it in.
    context: contextvars.Context | None = None


class Store:
    """Open read or write transactions on the history database."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.postgres = sql.dialect == "postgresql"

    @asynccontextmanager
    async def read(self) -> AsyncIterator["Tx"]:
        """Run queries that need no snapshot of their own (each sees the latest commit)."""
        async with self.sql.read() as tx:
            yield Tx(tx, self.postgres)

    async def end_job(self, user_id: str, job_id: UUID, at: datetime) -> bool:
        """Mark one of the user's jobs ended (kept if it was), on its own; tell if it exists."""
        return bool(await self.sql.execute(END_JOB, job_id, user_id, at))

    @asynccontextmanager
    async def write(self) -> AsyncIterator["Tx"]:
        """Run queries in one write transaction, committed when the block exits cleanly."""
        async with self.sql.write() as tx:
            yield Tx(tx, self.postgres)


class Tx:
    """The queries of one transaction."""

    def __init__(self, tx: SqlTx, postgres: bool) -> None:
        self.tx = tx
        self.postgres = postgres

    async def get_session(self, session_id: UUID, *, lock: bool = False) -> SessionRecord | None:
        """Return a session by id; ``lock`` holds its row until the transaction ends."""
        rows = await self.tx.fetch(LOCK_SESSION if lock else GET_SESSION, session_id)
        return _session(rows[0]) if rows else None

    async def lock_persona(self, user_id: str, persona: str) -> None:
        """Hold a lock on the user's persona until the transaction ends (Postgres only)."""
        if self.postgres:
            await self.tx.fetch(LOCK_PERSONA, f"history.session:{user_id}:{persona}")
        # SQLite write transactions begin IMMEDIATE: they are serialised already.

    async def archive_active(self, user_id: str, persona: str, at: datetime) -> list[SessionRecord]:
        """Archive the user's active sessions with the persona and return them."""
        return [_session(row) for row in await self.tx.fetch(ARCHIVE_ACTIVE, user_id, persona, at)]

    async def archive_session(self, session_id: UUID, at: datetime) -> SessionRecord:
        """Archive one session and return it as stored."""
        [row] = await self.tx.fetch(ARCHIVE, session_id, at)
        return _session(row)

    async def delete_session(self, session_id: UUID) -> bool:
        """Delete a session; its messages go with it (foreign key cascade)."""
        return bool(await self.tx.execute(DELETE_SESSION, session_id))

    async def add_events(self, events: Sequence[Event]) -> None:
        """Queue events in the outbox; they commit or roll back with the transaction."""
        if events:
            await self.tx.executemany(
                INSERT_EVENT,
                [
                    (e.msg_id, e.subject, e.payload, e.request_id, e.user_id, e.created_at,
                     e.claimed_until)
                    for e in events
                ],
            )

    async def insert_session(self, r: SessionRecord) -> None:
        """Insert a session, or raise :class:`ActiveSessionExists` on a concurrent create."""
        try:
            await self.tx.execute(
                INSERT_SESSION, r.id, r.user_id, r.persona, r.title, r.status, r.created_at,
                r.updated_at, r.archived_at, r.message_count,
            )
        except IntegrityError as exc:
            raise ActiveSessionExists(r.user_id, r.persona) from exc

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
        where, args = ["user_id = $1"], [user_id]
        if status is not None:
            args.append(status)
            where.append(f"status = ${len(args)}")
        if persona is not None:
            args.append(persona)
            where.append(f"persona = ${len(args)}")
        query, params = _page(f"SELECT {SESSION} FROM {{s}}.sessions", where, args, after, limit)
        return [_session(row) for row in await self.tx.fetch(query, *params)]

    async def session_unfinished(self, session_id: UUID, horizon: datetime) -> list[UUID]:
        """Return the session's unfinished jobs created after ``horizon``, oldest first."""
        rows = await self.tx.fetch(SESSION_UNFINISHED, session_id, horizon)
        return [uuid_of(row[0]) for row in rows]

    async def list_messages(
        self, session_id: UUID, *, after: Position | None, limit: int
    ) -> list[MessageRecord]:
        """Return up to ``limit`` messages of a session older than ``after``, newest first."""
        query, params = _page(
            f"SELECT {MESSAGE} FROM {{s}}.messages", ["session_id = $1"], [session_id], after,
            limit,
        )
        return [message_of(row) for row in await self.tx.fetch(query, *params)]

    async def list_feed(
        self, user_id: str, *, after: Position | None, limit: int
    ) -> list[MessageRecord]:
        """Return up to ``limit`` of the user's messages older than ``after``, newest first."""
        query, params = _page(
            f"SELECT {MESSAGE} FROM {{s}}.messages", ["user_id = $1"], [user_id], after, limit
        )
        return [message_of(row) for row in await self.tx.fetch(query, *params)]

    async def search_messages(self, user_id: str, text: str, limit: int) -> list[MessageRecord]:
        """Return up to ``limit`` of the user's messages containing ``text``, newest first."""
        # A plain substring: % and _ match themselves. lower() folds ASCII only on SQLite.
        escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = await self.tx.fetch(SEARCH, user_id, f"%{escaped}%", limit)
        return [message_of(row) for row in rows]


def _page(
    select: str, where: list[str], args: list[Any], after: Position | None, limit: int
) -> tuple[str, list[Any]]:
    """Order newest first and keep the rows strictly after the cursor position."""
    if after is not None:
        # A row-value comparison is an index bound on both backends, so a deep page
        # starts at the cursor instead of filtering every newer row.
        args = [*args, after.created_at, after.id]
        where = [*where, f"(created_at, id) < (${len(args) - 1}, ${len(args)})"]
    args = [*args, limit]
    return f"{select} WHERE {' AND '.join(where)} {NEWEST_FIRST} LIMIT ${len(args)}", args


def _session(row: Row) -> SessionRecord:
    return SessionRecord(
        id=uuid_of(row[0]), user_id=row[1], persona=row[2], title=row[3], status=row[4],
        created_at=time_of(row[5]), updated_at=time_of(row[6]), archived_at=maybe_time(row[7]),
        message_count=row[8],
    )


def message_of(row: Row) -> MessageRecord:
    return MessageRecord(
        id=uuid_of(row[0]), session_id=uuid_of(row[1]), user_id=row[2], role=row[3],
        content=row[4], created_at=time_of(row[5]), job_id=maybe_uuid(row[6]),
    )
