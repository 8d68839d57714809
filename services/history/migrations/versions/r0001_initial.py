"""Create sessions and messages.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

ACTIVE = sa.text("status = 'active'")


def _schema() -> str | None:
    """Return ``history`` on Postgres; SQLite has no schemas."""
    return "history" if op.get_bind().dialect.name == "postgresql" else None


def upgrade() -> None:
    """Create the schema, both tables and the index of every list query."""
    schema = _schema()
    if schema is not None:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("persona", sa.String(64), nullable=False),
        sa.Column("title", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True)),
        sa.Column("message_count", sa.Integer(), nullable=False, server_default="0"),
        sa.CheckConstraint("status IN ('active', 'archived')", name="ck_sessions_status"),
        schema=schema,
    )
    op.create_index(
        "ix_sessions_user_created",
        "sessions",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=schema,
    )
    op.create_index(
        "ix_sessions_user_persona_status",
        "sessions",
        ["user_id", "persona", "status"],
        schema=schema,
    )
    op.create_index(
        "uq_sessions_one_active",
        "sessions",
        ["user_id", "persona"],
        unique=True,
        schema=schema,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    sessions_id = f"{schema}.sessions.id" if schema else "sessions.id"
    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Uuid()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], [sessions_id], name="fk_messages_session", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("job_id", "role", name="uq_messages_job_role"),
        sa.CheckConstraint("role IN ('user', 'assistant')", name="ck_messages_role"),
        schema=schema,
    )
    op.create_index(
        "ix_messages_session_created",
        "messages",
        ["session_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=schema,
    )
    op.create_index(
        "ix_messages_user_created",
        "messages",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=schema,
    )


def downgrade() -> None:
    """Drop both tables; the schema stays, it holds the version table."""
    schema = _schema()
    op.drop_table("messages", schema=schema)
    op.drop_table("sessions", schema=schema)
