"""Webhooks: endpoints told of a user's events, signed (Standard Webhooks); their deliveries."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from contracts.history import MAX_PAGE
from contracts.webhooks import MAX_URL_CHARS, DeliveryRecord, EndpointRecord, WebhookEvent
from services.gateway.deps import CallerDep, ServiceDep
from services.gateway.schemas import Page, problems

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


class WebhookCreate(BaseModel):
    """An endpoint to register: an http(s) URL and the events it wants."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_CHARS, examples=["https://example.com/hook"])
    events: list[WebhookEvent] = Field(min_length=1, max_length=4)
    description: str | None = Field(default=None, max_length=500)


class WebhookRead(BaseModel):
    """A registered endpoint (its secret is shown only when it is created)."""

    id: UUID
    url: str
    events: list[WebhookEvent]
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, record: EndpointRecord) -> "WebhookRead":
        """Convert an endpoint record."""
        return cls.model_validate(record.model_dump(exclude={"user_id", "schema_version"}))


class WebhookCreated(WebhookRead):
    """A new endpoint with its signing secret (``whsec_...``): keep it, it is not shown again."""

    secret: str


class AttemptRead(BaseModel):
    """One try at a delivery."""

    number: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: datetime | None


class DeliveryRead(BaseModel):
    """One event sent to an endpoint: its status, attempts and last error."""

    id: UUID
    event_id: str
    event_type: WebhookEvent
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    resend_of: UUID | None
    attempt_log: list[AttemptRead]

    @classmethod
    def of(cls, record: DeliveryRecord) -> "DeliveryRead":
        """Convert a delivery record."""
        return cls.model_validate(record.model_dump(exclude={"endpoint_id", "schema_version"}))


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Cursor = Annotated[str | None, Query(max_length=512)]


@router.post(
    "", status_code=201, response_model=WebhookCreated,
    responses=problems(401, 409, 422, 500, 503, 504),
)
async def create_webhook(
    body: WebhookCreate, caller: CallerDep, service: ServiceDep
) -> WebhookCreated:
    """Register an endpoint for some of the caller's events; the answer holds its secret."""
    created = await service.create_webhook(
        caller, body.url, tuple(body.events), body.description
    )
    assert created.endpoint is not None and created.secret is not None
    return WebhookCreated(**WebhookRead.of(created.endpoint).model_dump(), secret=created.secret)


@router.get("", response_model=Page[WebhookRead], responses=problems(401, 422, 500, 503, 504))
async def list_webhooks(
    caller: CallerDep, service: ServiceDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[WebhookRead]:
    """List the caller's endpoints, newest first."""
    page = await service.list_webhooks(caller, limit, cursor)
    return Page(items=[WebhookRead.of(e) for e in page.items], next_cursor=page.next_cursor)


@router.delete(
    "/{webhook_id}", status_code=204, response_class=Response,
    responses=problems(401, 404, 422, 500, 503, 504),
)
async def delete_webhook(caller: CallerDep, service: ServiceDep, webhook_id: UUID) -> Response:
    """Delete one of the caller's endpoints; nothing more is sent to it."""
    await service.delete_webhook(caller, webhook_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries", response_model=Page[DeliveryRead],
    responses=problems(401, 404, 422, 500, 503, 504),
)
async def list_deliveries(
    caller: CallerDep, service: ServiceDep, webhook_id: UUID, limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[DeliveryRead]:
    """List an endpoint's deliveries, newest first, each with its attempts."""
    page = await service.list_deliveries(caller, webhook_id, limit, cursor)
    return Page(items=[DeliveryRead.of(d) for d in page.items], next_cursor=page.next_cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/resend", status_code=202,
    response_model=DeliveryRead, responses=problems(401, 404, 422, 500, 503, 504),
)
async def resend_delivery(
    caller: CallerDep, service: ServiceDep, webhook_id: UUID, delivery_id: UUID
) -> DeliveryRead:
    """Send a delivery's event to the endpoint again, as a new delivery."""
    return DeliveryRead.of(await service.resend_delivery(caller, webhook_id, delivery_id))
