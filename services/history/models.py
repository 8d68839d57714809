"""Tables of the history service.

Tables live in the Postgres schema ``history``; on SQLite, which has no
schemas, the engine translates that schema away (see ``Database.make_engine``), so
the one set of tables serves both backends.
"""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)

from services.runtime.database import Database, UTCDateTime

SCHEMA = "history"
# Where the tables live, how they migrate, and the engine factory (services.runtime.database).
DATABASE = Database(
    schema=SCHEMA,
    package="services.history",
    lock_key=0x68697374_6F727931,  # "history1"
    write_option="history_write",
)


metadata = MetaData(schema=SCHEMA)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", String(256), nullable=False),
    Column("persona", String(64), nullable=False),
    Column("title", String(200)),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("archived_at", UTCDateTime),
    Column("message_count", Integer, nullable=False, server_default="0"),
    # The last job admitted in the session: the next one follows it while it is unfinished.
    Column("tail_job_id", Uuid),
    CheckConstraint("status IN ('active', 'archived')", name="ck_sessions_status"),
)
Index(
    "ix_sessions_user_created",
    sessions.c.user_id,
    sessions.c.created_at.desc(),
    sessions.c.id.desc(),
)
# The filtered lists; persona with status uses the persona index and filters a few rows.
Index(
    "ix_sessions_user_status_created",
    sessions.c.user_id,
    sessions.c.status,
    sessions.c.created_at.desc(),
    sessions.c.id.desc(),
)
Index(
    "ix_sessions_user_persona_created",
    sessions.c.user_id,
    sessions.c.persona,
    sessions.c.created_at.desc(),
    sessions.c.id.desc(),
)
# At most one active session per user and persona, even under concurrent creates.
Index(
    "uq_sessions_one_active",
    sessions.c.user_id,
    sessions.c.persona,
    unique=True,
    postgresql_where=text("status = 'active'"),
    sqlite_where=text("status = 'active'"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("session_id", Uuid, ForeignKey(sessions.c.id, ondelete="CASCADE"), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("job_id", Uuid),
    Column("created_at", UTCDateTime, nullable=False),
    # On a user message: when its job ended (reply stored, failed or cancelled); NULL while
    # the job is unfinished. And the job it follows (the session's unfinished tail when it
    # was admitted), so a repeated append answers the same.
    Column("job_ended_at", UTCDateTime),
    Column("follows", Uuid),
    UniqueConstraint("job_id", "role", name="uq_messages_job_role"),
    CheckConstraint("role IN ('user', 'assistant')", name="ck_messages_role"),
)
Index(
    "ix_messages_session_created",
    messages.c.session_id,
    messages.c.created_at.desc(),
    messages.c.id.desc(),
)
Index(
    "ix_messages_user_created",
    messages.c.user_id,
    messages.c.created_at.desc(),
    messages.c.id.desc(),
)
# Unfinished jobs, of a user (the limit) and of a session (multitask, delete): partial
# indexes holding only the few user messages whose job has not ended.
UNFINISHED = text("role = 'user' AND job_ended_at IS NULL")
Index(
    "ix_messages_user_unfinished",
    messages.c.user_id,
    messages.c.created_at,
    postgresql_where=UNFINISHED,
    sqlite_where=UNFINISHED,
)
Index(
    "ix_messages_session_unfinished",
    messages.c.session_id,
    messages.c.created_at,
    postgresql_where=UNFINISHED,
    sqlite_where=UNFINISHED,
)

# Events written in the same transaction as the change they announce; a relay
# publishes the pending ones (``sent_at`` NULL) in ``seq`` order.
outbox = Table(
    "outbox",
    metadata,
    # SQLite autoincrements only an INTEGER primary key.
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("msg_id", String(200), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("payload", Text, nullable=False),
    Column("request_id", String(200), nullable=False),
    Column("user_id", String(256)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("claimed_until", UTCDateTime),
    Column("sent_at", UTCDateTime),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    UniqueConstraint("msg_id", name="uq_outbox_msg_id"),
)
Index(
    "ix_outbox_pending",
    outbox.c.seq,
    postgresql_where=text("sent_at IS NULL"),
    sqlite_where=text("sent_at IS NULL"),
)
