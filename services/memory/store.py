"""Persistence of memories and processed sessions: queries only, no rules."""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.memory import MemoryRecord
from services.memory.errors import AlreadyProcessed
from services.memory.models import (
    ANNOUNCED,
    DATABASE,
    DELETED,
    STORED,
    memories,
    processed_sessions,
)
from services.runtime.cursor import Position


@dataclass(frozen=True)
class Processed:
    """What is recorded about a session the service has handled."""

    session_id: UUID
    status: str
    memory_count: int
    processed_at: datetime


class Store:
    """Open read or write transactions on the memory database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def read(self) -> AsyncIterator["Tx"]:
        """Run queries in one read transaction."""
        async with self.engine.begin() as conn:
            yield Tx(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator["Tx"]:
        """Run queries in one write transaction, committed when the block exits cleanly."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{DATABASE.write_option: True})
            async with conn.begin():
                yield Tx(conn)


class Tx:
    """The queries of one transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def processed(self, session_id: UUID) -> Processed | None:
        """Return the record of a handled session, if any."""
        query = select(processed_sessions).where(processed_sessions.c.session_id == session_id)
        row = (await self.conn.execute(query)).mappings().first()
        return Processed(**row) if row else None

    async def record_processed(self, session_id: UUID, memory_count: int, at: datetime) -> None:
        """Record a session as stored, or raise :class:`AlreadyProcessed` if it is recorded."""
        try:
            await self.conn.execute(
                insert(processed_sessions).values(
                    session_id=session_id,
                    status=STORED,
                    memory_count=memory_count,
                    processed_at=at,
                )
            )
        except IntegrityError as exc:
            raise AlreadyProcessed(session_id) from exc

    async def mark_announced(self, session_id: UUID) -> None:
        """Note that a stored session's event was published."""
        await self.conn.execute(
            update(processed_sessions)
            .where(
                processed_sessions.c.session_id == session_id, processed_sessions.c.status == STORED
            )
            .values(status=ANNOUNCED)
        )

    async def insert_memories(self, records: Sequence[MemoryRecord]) -> None:
        """Insert memories."""
        if records:
            rows = [record.model_dump(exclude={"schema_version"}) for record in records]
            await self.conn.execute(insert(memories), rows)

    async def session_memory_ids(self, session_id: UUID) -> list[UUID]:
        """Return the ids of a session's memories, oldest first."""
        query = (
            select(memories.c.id)
            .where(memories.c.session_id == session_id)
            .order_by(memories.c.created_at, memories.c.id)
        )
        return list((await self.conn.execute(query)).scalars().all())

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
        stmt = select(memories).where(memories.c.user_id == user_id)
        if persona is not None:
            stmt = stmt.where(memories.c.persona == persona)
        if query:
            # ILIKE on Postgres, lower() LIKE lower() on SQLite; % and _ match themselves.
            stmt = stmt.where(memories.c.content.icontains(query, autoescape=True))
        if after is not None:
            # A row-value comparison is an index bound on both backends.
            stmt = stmt.where(
                tuple_(memories.c.created_at, memories.c.id) < (after.created_at, after.id)
            )
        stmt = stmt.order_by(memories.c.created_at.desc(), memories.c.id.desc()).limit(limit)
        rows = (await self.conn.execute(stmt)).mappings().all()
        return [MemoryRecord.model_validate(dict(row)) for row in rows]

    async def delete_memory(self, user_id: str, memory_id: UUID) -> bool:
        """Delete one memory of the user; tell whether it existed."""
        result = await self.conn.execute(
            delete(memories).where(memories.c.id == memory_id, memories.c.user_id == user_id)
        )
        return bool(result.rowcount)

    async def forget_session(self, session_id: UUID, at: datetime) -> int:
        """Delete a session's memories and leave a tombstone; return how many went."""
        # The tombstone first: on Postgres it waits for a concurrent store of the session to
        # commit, so the delete below sees (and removes) the memories that store wrote.
        values: dict[str, Any] = {
            "session_id": session_id,
            "status": DELETED,
            "memory_count": 0,
            "processed_at": at,
        }
        dialect = postgresql if self.conn.dialect.name == "postgresql" else sqlite
        upsert = dialect.insert(processed_sessions).values(**values)
        await self.conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[processed_sessions.c.session_id],
                set_={"status": DELETED, "memory_count": 0, "processed_at": at},
            )
        )
        result = await self.conn.execute(
            delete(memories).where(memories.c.session_id == session_id)
        )
        return int(result.rowcount or 0)
