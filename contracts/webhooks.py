"""Webhook endpoints of users and their deliveries, as the webhooks service serves them."""

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.base import Contract, Reply
from contracts.history import MAX_PAGE

WebhookEvent = Literal["job.completed", "job.failed", "job.cancelled", "memory.created"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = (
    "job.completed", "job.failed", "job.cancelled", "memory.created",
)
DeliveryStatus = Literal["pending", "delivered", "failed"]
MAX_URL_CHARS = 2000


class EndpointRecord(Contract):
    """A URL a user asked to be told about events at (its secret is never in a record)."""

    id: UUID
    user_id: str
    url: str = Field(max_length=MAX_URL_CHARS)
    events: tuple[WebhookEvent, ...]
    description: str | None = Field(default=None, max_length=500)
    created_at: datetime


class CreateEndpoint(Contract):
    """Register an endpoint; the reply carries its signing secret, the only time it is shown."""

    user_id: str = Field(min_length=1, max_length=256)
    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    events: tuple[WebhookEvent, ...] = Field(min_length=1)
    description: str | None = Field(default=None, max_length=500)


class EndpointCreated(Reply):
    """The endpoint and its secret (``whsec_...``)."""

    endpoint: EndpointRecord | None = None
    secret: str | None = None


class ListEndpoints(Contract):
    """List a user's endpoints, newest first."""

    user_id: str = Field(min_length=1, max_length=256)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


class EndpointPage(Reply):
    """A page of endpoints; ``next_cursor`` is None on the last page."""

    items: tuple[EndpointRecord, ...] = ()
    next_cursor: str | None = None


class DeleteEndpoint(Contract):
    """Delete one of a user's endpoints; its pending deliveries are dropped."""

    user_id: str = Field(min_length=1, max_length=256)
    endpoint_id: UUID


class EndpointDeleted(Reply):
    """Whether the endpoint was deleted (``not_found`` comes as an error)."""

    deleted: bool = False


class AttemptRecord(Contract):
    """One try at a delivery: when, what the receiver answered, when the next try is due."""

    number: int = Field(ge=1)
    at: datetime
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: int = Field(ge=0)
    next_attempt_at: datetime | None = None


class DeliveryRecord(Contract):
    """One event sent (or being sent) to one endpoint, with its attempts oldest first."""

    id: UUID
    endpoint_id: UUID
    event_id: str
    event_type: WebhookEvent
    status: DeliveryStatus
    attempts: int = Field(ge=0)
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None
    resend_of: UUID | None = None
    attempt_log: tuple[AttemptRecord, ...] = ()


class ListDeliveries(Contract):
    """List the deliveries of one of a user's endpoints, newest first."""

    user_id: str = Field(min_length=1, max_length=256)
    endpoint_id: UUID
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


class DeliveryPage(Reply):
    """A page of deliveries; ``next_cursor`` is None on the last page."""

    items: tuple[DeliveryRecord, ...] = ()
    next_cursor: str | None = None


class ResendDelivery(Contract):
    """Send a delivery's event to its endpoint again, as a new delivery."""

    user_id: str = Field(min_length=1, max_length=256)
    endpoint_id: UUID
    delivery_id: UUID


class DeliveryReply(Reply):
    """The delivery a resend queued."""

    delivery: DeliveryRecord | None = None


class DeliverWebhook(Contract):
    """Try one delivery now (a message per delivery: naks with a delay are its backoff)."""

    delivery_id: UUID
