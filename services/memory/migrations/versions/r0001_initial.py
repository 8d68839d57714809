"""Create memories and processed sessions.

Revision ID: 0001
Revises:
Create Date: 2025-01-03
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _schema() -> str | None:
    """Return ``memory`` on Postgres; SQLite has no schemas."""
    return "memory" if op.get_bind().dialect.name == "postgresql" else None


def upgrade() -> None:
    """Create the schema, both tables and the indexes of recall and deletion."""
    schema = _schema()
    if schema is not None:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    op.create_table(
        "memories",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("persona", sa.String(64), nullable=False),
        sa.Column("content", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )
    op.create_index(
        "ix_memories_user_created",
        "memories",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=schema,
    )
    op.create_index(
        "ix_memories_user_persona_created",
        "memories",
        ["user_id", "persona", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=schema,
    )
    op.create_index("ix_memories_session", "memories", ["session_id"], schema=schema)
    op.create_table(
        "processed_sessions",
        sa.Column("session_id", sa.Uuid(), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("memory_count", sa.Integer(), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('stored', 'announced', 'deleted')", name="ck_processed_sessions_status"
        ),
        schema=schema,
    )


def downgrade() -> None:
    """Drop both tables; the schema stays, it holds the version table."""
    schema = _schema()
    op.drop_table("processed_sessions", schema=schema)
    op.drop_table("memories", schema=schema)
