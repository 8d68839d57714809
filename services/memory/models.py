"""Tables of the memory service.

Tables live in the Postgres schema ``memory``; on SQLite, which has no
schemas, the engine translates that schema away (see ``Database.make_engine``), so
the one set of tables serves both backends and shares the file with history
(the names do not collide: ``memories``, ``processed_sessions``).
"""

from sqlalchemy import (
    CheckConstraint,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Uuid,
)

from services.runtime.database import Database, UTCDateTime

SCHEMA = "memory"
MEMORY_CHARS = 500  # contracts.memory.MAX_MEMORY_CHARS, fixed in the migration

# Whether a processed session's MemoriesStored event is known to be published,
# or the session was deleted (a tombstone: a late archived event stores nothing).
STORED = "stored"
ANNOUNCED = "announced"
DELETED = "deleted"
STATUSES = (STORED, ANNOUNCED, DELETED)


# Where the tables live, how they migrate, and the engine factory (services.runtime.database).
DATABASE = Database(
    schema=SCHEMA,
    package="services.memory",
    lock_key=0x6D656D6F_72793031,  # "memory01"
    write_option="memory_write",
)
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
