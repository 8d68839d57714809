"""Admission of jobs: when each user message's job ended, what it follows, a session's tail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

UNFINISHED = sa.text("role = 'user' AND job_ended_at IS NULL")


def _schema() -> str | None:
    """Return ``history`` on Postgres; SQLite has no schemas."""
    return "history" if op.get_bind().dialect.name == "postgresql" else None


def upgrade() -> None:
    """Add the columns and the partial indexes of unfinished jobs.

    Jobs of messages stored before this revision were tracked by the gateway's lanes,
    which are gone: they are marked ended, so none of them counts against a limit or
    holds a session's order.
    """
    schema = _schema()
    op.add_column("messages", sa.Column("job_ended_at", sa.DateTime(timezone=True)), schema=schema)
    op.add_column("messages", sa.Column("follows", sa.Uuid()), schema=schema)
    op.add_column("sessions", sa.Column("tail_job_id", sa.Uuid()), schema=schema)
    table = f"{schema}.messages" if schema else "messages"
    op.execute(f"UPDATE {table} SET job_ended_at = created_at WHERE role = 'user'")
    op.create_index(
        "ix_messages_user_unfinished",
        "messages",
        ["user_id", "created_at"],
        schema=schema,
        postgresql_where=UNFINISHED,
        sqlite_where=UNFINISHED,
    )
    op.create_index(
        "ix_messages_session_unfinished",
        "messages",
        ["session_id", "created_at"],
        schema=schema,
        postgresql_where=UNFINISHED,
        sqlite_where=UNFINISHED,
    )


def downgrade() -> None:
    """Drop the indexes and the columns."""
    schema = _schema()
    op.drop_index("ix_messages_session_unfinished", "messages", schema=schema)
    op.drop_index("ix_messages_user_unfinished", "messages", schema=schema)
    # SQLite (3.35 and later) drops an unindexed column in place, like Postgres.
    op.drop_column("sessions", "tail_job_id", schema=schema)
    op.drop_column("messages", "follows", schema=schema)
    op.drop_column("messages", "job_ended_at", schema=schema)
