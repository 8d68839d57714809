"""Add the event outbox and the indexes of the filtered session lists.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

PENDING = sa.text("sent_at IS NULL")


def _schema() -> str | None:
    """Return ``history`` on Postgres; SQLite has no schemas."""
    return "history" if op.get_bind().dialect.name == "postgresql" else None


def upgrade() -> None:
    """Create the outbox; index sessions for the status and persona filters."""
    schema = _schema()
    op.create_table(
        "outbox",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("msg_id", sa.String(200), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(256)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.UniqueConstraint("msg_id", name="uq_outbox_msg_id"),
        schema=schema,
    )
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["seq"],
        schema=schema,
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    # The unique partial index on (user_id, persona) WHERE active serves archive_active.
    op.drop_index("ix_sessions_user_persona_status", "sessions", schema=schema)
    op.create_index(
        "ix_sessions_user_status_created",
        "sessions",
        ["user_id", "status", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=schema,
    )
    op.create_index(
        "ix_sessions_user_persona_created",
        "sessions",
        ["user_id", "persona", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=schema,
    )


def downgrade() -> None:
    """Drop the outbox and restore the original session indexes."""
    schema = _schema()
    op.drop_index("ix_sessions_user_persona_created", "sessions", schema=schema)
    op.drop_index("ix_sessions_user_status_created", "sessions", schema=schema)
    op.create_index(
        "ix_sessions_user_persona_status",
        "sessions",
        ["user_id", "persona", "status"],
        schema=schema,
    )
    op.drop_table("outbox", schema=schema)
