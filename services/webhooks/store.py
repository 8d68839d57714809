"""Persistence of endpoints, deliveries and attempts: queries only, no rules."""

import base64
import binascii
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.webhooks import AttemptRecord, DeliveryRecord, EndpointRecord
from services.webhooks.db import WRITE_OPTION
from services.webhooks.errors import Invalid
from services.webhooks.models import PENDING, attempts, deliveries, endpoints


def encode_cursor(created_at: datetime, ident: UUID) -> str:
    """Render the position of a page's last row (newest first) as an opaque token."""
    raw = f"w|{created_at.isoformat()}|{ident.hex}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, UUID]:
    """Parse a token of :func:`encode_cursor`, or raise :class:`Invalid`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, created, ident = raw.split("|")
        position = datetime.fromisoformat(created), UUID(hex=ident)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Invalid("malformed cursor") from exc
    if kind != "w" or position[0].tzinfo is None:
        raise Invalid("malformed cursor")
    return position


class Endpoint(EndpointRecord):
    """An endpoint with its signing secret (never leaves this service but in a create)."""

    secret: str


class Store:
    """Open read or write transactions on the webhooks database."""

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
            conn = await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                yield Tx(conn)


class Tx:
    """The queries of one transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add_endpoint(self, endpoint: Endpoint) -> None:
        """Insert an endpoint."""
        row = endpoint.model_dump(exclude={"schema_version"})
        await self.conn.execute(insert(endpoints).values(**row))

    async def count_endpoints(self, user_id: str) -> int:
        """Count a user's endpoints."""
        rows = await self.conn.execute(select(endpoints.c.id).where(endpoints.c.user_id == user_id))
        return len(rows.all())

    async def endpoint(self, endpoint_id: UUID) -> Endpoint | None:
        """Return one endpoint, whoever owns it."""
        row = (await self.conn.execute(
            select(endpoints).where(endpoints.c.id == endpoint_id)
        )).mappings().first()
        return Endpoint.model_validate(dict(row)) if row else None

    async def endpoints_of(
        self, user_id: str, after: tuple[datetime, UUID] | None = None, limit: int | None = None
    ) -> list[Endpoint]:
        """Return a user's endpoints, newest first."""
        query = select(endpoints).where(endpoints.c.user_id == user_id)
        if after is not None:
            query = query.where(tuple_(endpoints.c.created_at, endpoints.c.id) < after)
        query = query.order_by(endpoints.c.created_at.desc(), endpoints.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        rows = (await self.conn.execute(query)).mappings().all()
        return [Endpoint.model_validate(dict(row)) for row in rows]

    async def delete_endpoint(self, endpoint_id: UUID) -> None:
        """Delete an endpoint, its deliveries and their attempts."""
        ids = select(deliveries.c.id).where(deliveries.c.endpoint_id == endpoint_id)
        await self.conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(ids)))
        await self.conn.execute(delete(deliveries).where(deliveries.c.endpoint_id == endpoint_id))
        await self.conn.execute(delete(endpoints).where(endpoints.c.id == endpoint_id))

    async def add_delivery(self, row: dict[str, Any]) -> bool:
        """Insert a delivery; False when the endpoint already has one for that event."""
        try:
            async with self.conn.begin_nested():
                await self.conn.execute(insert(deliveries).values(**row))
        except IntegrityError:
            return False
        return True

    async def pending_of_event(self, event_id: str) -> list[UUID]:
        """Return the ids of an event's deliveries still to be made."""
        rows = await self.conn.execute(
            select(deliveries.c.id).where(
                deliveries.c.event_id == event_id, deliveries.c.status == PENDING
            )
        )
        return [row[0] for row in rows.all()]

    async def delivery(self, delivery_id: UUID) -> dict[str, Any] | None:
        """Return a delivery's row (payload included)."""
        row = (await self.conn.execute(
            select(deliveries).where(deliveries.c.id == delivery_id)
        )).mappings().first()
        return dict(row) if row else None

    async def record_attempt(
        self, delivery_id: UUID, attempt: AttemptRecord, status: str,
        finished_at: datetime | None,
    ) -> None:
        """Store one attempt and move the delivery on (its attempts, status and last error)."""
        await self.conn.execute(insert(attempts).values(
            delivery_id=delivery_id, **attempt.model_dump(exclude={"schema_version"})
        ))
        await self.conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
            attempts=attempt.number, status=status, last_status_code=attempt.status_code,
            last_error=attempt.error, next_attempt_at=attempt.next_attempt_at,
            finished_at=finished_at,
        ))

    async def deliveries_of(
        self, endpoint_id: UUID, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[DeliveryRecord]:
        """Return an endpoint's deliveries, newest first, each with its attempts."""
        query = select(deliveries).where(deliveries.c.endpoint_id == endpoint_id)
        if after is not None:
            query = query.where(tuple_(deliveries.c.created_at, deliveries.c.id) < after)
        query = query.order_by(deliveries.c.created_at.desc(), deliveries.c.id.desc()).limit(limit)
        rows = (await self.conn.execute(query)).mappings().all()
        logs = await self._attempts([row["id"] for row in rows])
        return [
            DeliveryRecord.model_validate(
                {**{k: v for k, v in row.items() if k != "payload"},
                 "attempt_log": logs.get(row["id"], ())}
            )
            for row in rows
        ]

    async def _attempts(self, ids: Sequence[UUID]) -> dict[UUID, list[AttemptRecord]]:
        if not ids:
            return {}
        rows = (await self.conn.execute(
            select(attempts).where(attempts.c.delivery_id.in_(ids)).order_by(attempts.c.number)
        )).mappings().all()
        found: dict[UUID, list[AttemptRecord]] = {}
        for row in rows:
            found.setdefault(row["delivery_id"], []).append(AttemptRecord.model_validate(
                {k: v for k, v in row.items() if k != "delivery_id"}
            ))
        return found
