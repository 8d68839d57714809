"""Tables of the memory service.

Tables live in the Postgres schema ``memory``; on SQLite, which has no
schemas, the engine translates that schema away (see ``db.make_engine``), so
the one set of tables serves both backends and shares the file with history
(the names do not collide: ``memories``, ``processed_sessions``).
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    Uuid,
)

SCHEMA = "memory"
MEMORY_CHARS = 500  # contracts.memory.MAX_MEMORY_CHARS, fixed in the migration

# Whether a processed session's MemoriesStored event is known to be published,
# or the session was deleted (a tombstone: a late archived event stores nothing).
STORED = "stored"
ANNOUNCED = "announced"
DELETED = "deleted"
STATUSES = (STORED, ANNOUNCED, DELETED)


class UTCDateTime(TypeDecorator[datetime]):
    """Store aware datetimes as UTC and read them back aware, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite keeps text; one fixed naive UTC format keeps comparisons and ordering right.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(schema=SCHEMA)

memories = Table(
    "memories",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", String(256), nullable=False),
    Column("session_id", Uuid, nullable=False),
    Column("persona", String(64), nullable=False),
    Column("content", String(MEMORY_CHARS), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
Index(
    "ix_memories_user_created",
    memories.c.user_id,
    memories.c.created_at.desc(),
    memories.c.id.desc(),
)
Index(
    "ix_memories_user_persona_created",
    memories.c.user_id,
    memories.c.persona,
    memories.c.created_at.desc(),
    memories.c.id.desc(),
)
Index("ix_memories_session", memories.c.session_id)

# One row per archived session handled: its primary key makes generation idempotent.
processed_sessions = Table(
    "processed_sessions",
    metadata,
    Column("session_id", Uuid, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("memory_count", Integer, nullable=False),
    Column("processed_at", UTCDateTime, nullable=False),
    CheckConstraint(
        "status IN ('stored', 'announced', 'deleted')", name="ck_processed_sessions_status"
    ),
)
