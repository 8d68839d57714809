"""Persistence of memories and processed sessions: queries only, no rules.

Every statement is a template of :mod:`services.runtime.sql` (asyncpg on
Postgres, sqlite3 threads on SQLite); the tables are declared in
:mod:`services.memory.models` and created by its migrations.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.memory import MemoryRecord
from services.memory.errors import AlreadyProcessed
from services.memory.models import ANNOUNCED, DELETED, STORED
from services.runtime.cursor import Position
from services.runtime.sql import IntegrityError, Row, Sql, time_of, uuid_of
from services.runtime.sql import Tx as SqlTx

MEMORY = "id, user_id, session_id, persona, content, created_at"
PROCESSED = (
    "SELECT session_id, status, memory_count, processed_at FROM {s}.processed_sessions "
    "WHERE session_id = $1"
)
RECORD = (
    "INSERT INTO {s}.processed_sessions (session_id, status, memory_count, processed_at) "
    "VALUES ($1, $2, $3, $4)"
)
ANNOUNCE = (
    f"UPDATE {{s}}.processed_sessions SET status = '{ANNOUNCED}' "
    f"WHERE session_id = $1 AND status = '{STORED}'"
)
INSERT_MEMORY = f"INSERT INTO {{s}}.memories ({MEMORY}) VALUES ($1, $2, $3, $4, $5, $6)"
SESSION_MEMORIES = (
    "SELECT id FROM {s}.memories WHERE session_id = $1 ORDER BY created_at, id"
)
DELETE_MEMORY = "DELETE FROM {s}.memories WHERE id = $1 AND user_id = $2"
TOMBSTONE = (
    "INSERT INTO {s}.processed_sessions (session_id, status, memory_count, processed_at) "
    f"VALUES ($1, '{DELETED}', 0, $2) ON CONFLICT (session_id) DO UPDATE "
    f"SET status = '{DELETED}', memory_count = 0, processed_at = $2"
)
FORGET = "DELETE FROM {s}.memories WHERE session_id = $1"


@dataclass(frozen=True)
class Processed:
    """What is recorded about a session the service has handled."""

    session_id: UUID
    status: str
    memory_count: int
    processed_at: datetime


class Store:
    """Open read or write transactions on the memory database."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.postgres = sql.dialect == "postgresql"

    @asynccontextmanager
    async def read(self) -> AsyncIterator["Tx"]:
        """Run queries that need no snapshot of their own (each sees the latest commit)."""
        async with self.sql.read() as tx:
            yield Tx(tx, self.postgres)

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

    async def processed(self, session_id: UUID) -> Processed | None:
        """Return the record of a handled session, if any."""
        rows = await self.tx.fetch(PROCESSED, session_id)
        if not rows:
            return None
        sid, status, count, at = rows[0]
        return Processed(uuid_of(sid), status, count, time_of(at))

    async def record_processed(self, session_id: UUID, memory_count: int, at: datetime) -> None:
        """Record a session as stored, or raise :class:`AlreadyProcessed` if it is recorded."""
        try:
            await self.tx.execute(RECORD, session_id, STORED, memory_count, at)
        except IntegrityError as exc:
            raise AlreadyProcessed(session_id) from exc

    async def mark_announced(self, session_id: UUID) -> None:
        """Note that a stored session's event was published."""
        await self.tx.execute(ANNOUNCE, session_id)

    async def insert_memories(self, records: Sequence[MemoryRecord]) -> None:
        """Insert memories."""
        if records:
            await self.tx.executemany(
                INSERT_MEMORY,
                [(r.id, r.user_id, r.session_id, r.persona, r.content, r.created_at)
                 for r in records],
            )

    async def session_memory_ids(self, session_id: UUID) -> list[UUID]:
        """Return the ids of a session's memories, oldest first."""
        return [uuid_of(row[0]) for row in await self.tx.fetch(SESSION_MEMORIES, session_id)]

    async def recall(
        self,
        user_id: str,
        *,
        persona: str | None,
        query: str | None,
        after: Position | None,
        limit: int,
    ) -> list[MemoryRecord]:
        """Return up to ``limit`` of the user's memories older than ``after``, newest first."""
        where, args = ["user_id = $1"], list[Any]([user_id])
        if persona is not None:
            args.append(persona)
            where.append(f"persona = ${len(args)}")
        if query:
            # A plain substring, ignoring case: % and _ match themselves.
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(f"%{escaped}%")
            n = len(args)
            where.append(
                f"content ILIKE ${n} ESCAPE '\\'" if self.postgres
                else f"lower(content) LIKE lower(${n}) ESCAPE '\\'"
            )
        if after is not None:
            # A row-value comparison is an index bound on both backends.
            args += [after.created_at, after.id]
            where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        template = (
            f"SELECT {MEMORY} FROM {{s}}.memories WHERE {' AND '.join(where)} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
        )
        return [_memory(row) for row in await self.tx.fetch(template, *args)]

    async def delete_memory(self, user_id: str, memory_id: UUID) -> bool:
        """Delete one memory of the user; tell whether it existed."""
        return bool(await self.tx.execute(DELETE_MEMORY, memory_id, user_id))

    async def forget_session(self, session_id: UUID, at: datetime) -> int:
        """Delete a session's memories and leave a tombstone; return how many went."""
        # The tombstone first: on Postgres it waits for a concurrent store of the session to
        # commit, so the delete below sees (and removes) the memories that store wrote.
        await self.tx.execute(TOMBSTONE, session_id, at)
        return await self.tx.execute(FORGET, session_id)


def _memory(row: Row) -> MemoryRecord:
    return MemoryRecord(
        id=uuid_of(row[0]), user_id=row[1], session_id=uuid_of(row[2]), persona=row[3],
        content=row[4], created_at=time_of(row[5]),
    )
