"""Create endpoints, deliveries and attempts.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _schema() -> str | None:
    """Return ``webhooks`` on Postgres; SQLite has no schemas."""
    return "webhooks" if op.get_bind().dialect.name == "postgresql" else None


def upgrade() -> None:
    """Create the schema, the three tables and the indexes of the lists."""
    schema = _schema()
    if schema is not None:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    prefix = f"{schema}." if schema else ""
    op.create_table(
        "endpoints",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(500)),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )
    op.create_index(
        "ix_endpoints_user_created", "endpoints", ["user_id", sa.text("created_at DESC")],
        schema=schema,
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "endpoint_id", sa.Uuid(),
            sa.ForeignKey(f"{prefix}endpoints.id", ondelete="CASCADE"), nullable=False,
        ),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_error", sa.String(500)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("resend_of", sa.Uuid()),
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_deliveries_endpoint_event"),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="ck_deliveries_status"
        ),
        schema=schema,
    )
    op.create_index(
        "ix_deliveries_endpoint_created", "deliveries",
        ["endpoint_id", sa.text("created_at DESC")], schema=schema,
    )
    op.create_table(
        "attempts",
        sa.Column(
            "delivery_id", sa.Uuid(),
            sa.ForeignKey(f"{prefix}deliveries.id", ondelete="CASCADE"), primary_key=True,
        ),
        sa.Column("number", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.String(500)),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        schema=schema,
    )


def downgrade() -> None:
    """Drop the tables; the schema stays, it holds the version table."""
    schema = _schema()
    op.drop_table("attempts", schema=schema)
    op.drop_table("deliveries", schema=schema)
    op.drop_table("endpoints", schema=schema)
