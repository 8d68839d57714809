"""Tables of the webhooks service.

Tables live in the Postgres schema ``webhooks``; on SQLite the schema is
translated away (``db.make_engine``) and the tables share the file with
history's and memory's (the names do not collide).
"""

from sqlalchemy import (
    JSON,
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
)

from services.runtime.database import UTCDateTime

SCHEMA = "webhooks"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

metadata = MetaData(schema=SCHEMA)

endpoints = Table(
    "endpoints",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", String(256), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("events", JSON, nullable=False),
    Column("description", String(500)),
    Column("secret", String(100), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("ix_endpoints_user_created", endpoints.c.user_id, endpoints.c.created_at.desc())

# One row per (endpoint, event): the unique key makes a repeated event fan out once.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column(
        "endpoint_id", Uuid, ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False
    ),
    Column("event_id", String(200), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # the exact body signed and sent
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_status_code", Integer),
    Column("last_error", String(500)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("resend_of", Uuid),
    UniqueConstraint("endpoint_id", "event_id", name="uq_deliveries_endpoint_event"),
    CheckConstraint(
        "status IN ('pending', 'delivered', 'failed')", name="ck_deliveries_status"
    ),
)
Index(
    "ix_deliveries_endpoint_created", deliveries.c.endpoint_id, deliveries.c.created_at.desc()
)

attempts = Table(
    "attempts",
    metadata,
    Column(
        "delivery_id", Uuid, ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("number", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("status_code", Integer),
    Column("error", String(500)),
    Column("duration_ms", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime),
)
