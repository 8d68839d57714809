"""Rules of the webhooks service: endpoints, the fan-out of events, and each attempt's fate.

An event (a job's final state, memories stored) fans out to the user's endpoints
that asked for its type: one delivery row per endpoint, unique per (endpoint,
event) so a repeated event is sent once, and one ``webhooks.deliver`` message per
delivery. Each message is one try: delivered (2xx) → acked; no answer, 5xx or 429
→ tried again after an exponential backoff with jitter (or the receiver's
``Retry-After``) by nak'ing the message with that delay, until
``WEBHOOK_RETRY_HOURS`` after the event; any other answer → given up. Every try is
recorded in the delivery's log. State lives in the database and the stream, so a
restart mid-retry loses nothing.
"""

import base64
import json
import random
import secrets
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import structlog

from contracts.base import Ping, Pong, utcnow
from contracts.chat import JobState
from contracts.memory import MemoriesStored
from contracts.webhooks import (
    AttemptRecord,
    CreateEndpoint,
    DeleteEndpoint,
    DeliveryPage,
    DeliveryReply,
    EndpointCreated,
    EndpointDeleted,
    EndpointPage,
    EndpointRecord,
    ListDeliveries,
    ListEndpoints,
    ResendDelivery,
    WebhookEvent,
)
from services.runtime.database import unreachable
from services.runtime.meta import RequestMeta
from services.runtime.settle import ACK, Verdict, retry
from services.webhooks.config import Settings
from services.webhooks.errors import Invalid, NotFound, TooMany, Unavailable
from services.webhooks.models import DELIVERED, FAILED, PENDING
from services.webhooks.sender import Outcome
from services.webhooks.store import Endpoint, Store, decode_cursor, encode_cursor
from services.webhooks.urls import check_url

log = structlog.get_logger("chatbus.webhooks")
CLOCK_SLACK = timedelta(seconds=5)  # between the clocks of the event's service and ours
BUSY_DELAY = 1.0  # seconds before a delivery to a busy endpoint is tried again
MESSAGE_IDS = uuid.UUID("5a1e7f0e-8a4b-4c4e-9d55-7765626b6f6f")


class Queue(Protocol):
    """Where a delivery is queued for its first try (the WEBHOOK_DELIVERIES stream)."""

    async def deliver(self, delivery_id: UUID) -> None: ...


class Send(Protocol):
    """One attempt at sending a signed body (:class:`services.webhooks.sender.Sender`)."""

    async def send(self, url: str, secret: str, message_id: str, body: str) -> Outcome: ...


def new_secret() -> str:
    """Return a fresh signing secret in the Standard Webhooks form ``whsec_<base64>``."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def message_id(endpoint_id: UUID, event_id: str) -> str:
    """Return the ``webhook-id`` of an event sent to an endpoint (the same on every resend)."""
    return f"msg_{uuid.uuid5(MESSAGE_IDS, f'{endpoint_id}:{event_id}').hex}"


class WebhookService:
    """Manage a user's endpoints, fan events out to them and make each attempt."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sender: Send,
        queue: Queue,
        clock: Callable[[], datetime] = utcnow,
        check: Callable[[str, bool], Awaitable[str]] = check_url,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sender = sender
        self.queue = queue
        self.clock = clock
        self.check = check
        self.in_flight: Counter[UUID] = Counter()  # attempts running now, per endpoint

    async def ping(self, _: Ping, __: RequestMeta) -> Pong:
        """Answer that this replica is alive and reaches its database."""
        if (why := await unreachable(self.store.engine)) is not None:
            raise Unavailable(why)
        return Pong(service="webhooks", instance=self.settings.instance)

    async def create_endpoint(self, req: CreateEndpoint, _: RequestMeta) -> EndpointCreated:
        """Register an endpoint and return it with its secret, shown this once."""
        url = await self.check(req.url, self.settings.webhook_allow_private)
        endpoint = Endpoint(
            id=uuid.uuid4(), user_id=req.user_id, url=url, events=tuple(dict.fromkeys(req.events)),
            description=req.description, created_at=self.clock(), secret=new_secret(),
        )
        async with self.store.write() as tx:
            if await tx.count_endpoints(req.user_id) >= self.settings.webhook_max_endpoints:
                raise TooMany(f"at most {self.settings.webhook_max_endpoints} endpoints per user")
            await tx.add_endpoint(endpoint)
        log.info("webhook endpoint registered", endpoint_id=str(endpoint.id), events=req.events)
        return EndpointCreated(endpoint=public(endpoint), secret=endpoint.secret)

    async def list_endpoints(self, req: ListEndpoints, _: RequestMeta) -> EndpointPage:
        """Return a page of the user's endpoints, newest first."""
        after = decode_cursor(req.cursor) if req.cursor else None
        async with self.store.read() as tx:
            found = await tx.endpoints_of(req.user_id, after, req.limit + 1)
        page, more = found[: req.limit], len(found) > req.limit
        cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
        return EndpointPage(items=tuple(public(e) for e in page), next_cursor=cursor)

    async def delete_endpoint(self, req: DeleteEndpoint, _: RequestMeta) -> EndpointDeleted:
        """Delete one of the user's endpoints; its queued deliveries are dropped when tried."""
        async with self.store.write() as tx:
            await self._own(tx, req.user_id, req.endpoint_id)
            await tx.delete_endpoint(req.endpoint_id)
        return EndpointDeleted(deleted=True)

    async def list_deliveries(self, req: ListDeliveries, _: RequestMeta) -> DeliveryPage:
        """Return a page of an endpoint's deliveries with their attempts, newest first."""
        after = decode_cursor(req.cursor) if req.cursor else None
        async with self.store.read() as tx:
            await self._own(tx, req.user_id, req.endpoint_id)
            found = await tx.deliveries_of(req.endpoint_id, after, req.limit + 1)
        page, more = found[: req.limit], len(found) > req.limit
        cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
        return DeliveryPage(items=tuple(page), next_cursor=cursor)

    async def resend(self, req: ResendDelivery, _: RequestMeta) -> DeliveryReply:
        """Queue a delivery's event to its endpoint again, as a new delivery."""
        async with self.store.write() as tx:
            await self._own(tx, req.user_id, req.endpoint_id)
            old = await tx.delivery(req.delivery_id)
            if old is None or old["endpoint_id"] != req.endpoint_id:
                raise NotFound("no such delivery")
            now = self.clock()
            row = {
                **old, "id": uuid.uuid4(), "status": PENDING, "attempts": 0,
                "last_status_code": None, "last_error": None, "created_at": now,
                "next_attempt_at": now, "finished_at": None,
                "resend_of": old["resend_of"] or old["id"],
                # A resend is an event of its own for the uniqueness of (endpoint, event).
                "event_id": f"{old['event_id'].split('#')[0]}#resend-{uuid.uuid4().hex[:12]}",
            }
            await tx.add_delivery(row)
        await self.queue.deliver(row["id"])
        async with self.store.read() as tx:
            [record] = [
                d for d in await tx.deliveries_of(req.endpoint_id, None, 200) if d.id == row["id"]
            ]
        return DeliveryReply(delivery=record)

    async def job_ended(self, state: JobState) -> int:
        """Fan a job's final state out to the user's endpoints; return the deliveries queued."""
        kind: WebhookEvent = f"job.{state.status}"  # type: ignore[assignment]
        data = {"job": state.model_dump(mode="json", exclude={"schema_version", "user_id"})}
        return await self._fan_out(
            state.user_id, kind, f"{kind}:{state.id}", state.finished_at or self.clock(), data
        )

    async def memories_stored(self, event: MemoriesStored) -> int:
        """Fan stored memories out as ``memory.created`` (nothing when none were stored)."""
        if not event.memory_ids:
            return 0
        data = {
            "session_id": str(event.session_id), "persona": event.persona,
            "memory_ids": [str(m) for m in event.memory_ids],
        }
        event_id = f"memory.created:{event.session_id}"
        return await self._fan_out(event.user_id, "memory.created", event_id, event.stored_at, data)

    async def _fan_out(
        self, user_id: str, kind: WebhookEvent, event_id: str, at: datetime, data: dict[str, Any]
    ) -> int:
        body = json.dumps(
            {"type": kind, "timestamp": at.isoformat(), "data": data}, separators=(",", ":")
        )
        now = self.clock()
        async with self.store.write() as tx:
            for endpoint in await tx.endpoints_of(user_id):
                # An endpoint registered after the event (a late replay) is not told of it.
                if kind in endpoint.events and endpoint.created_at <= at + CLOCK_SLACK:
                    await tx.add_delivery({
                        "id": uuid.uuid4(), "endpoint_id": endpoint.id, "event_id": event_id,
                        "event_type": kind, "payload": body, "status": PENDING, "attempts": 0,
                        "created_at": now, "next_attempt_at": now,
                    })
            # Those of an earlier, interrupted fan-out of the same event are queued again;
            # the stream drops a repeat within its dedup window, a try drops a finished one.
            pending = await tx.pending_of_event(event_id)
        for delivery_id in pending:
            await self.queue.deliver(delivery_id)
        return len(pending)

    async def attempt(self, delivery_id: UUID) -> Verdict:
        """Make the next attempt at a delivery and say how to settle its message."""
        async with self.store.read() as tx:
            row = await tx.delivery(delivery_id)
            endpoint = await tx.endpoint(row["endpoint_id"]) if row else None
        if row is None or endpoint is None or row["status"] != PENDING:
            return ACK  # deleted, or finished by an earlier delivery of the message
        if self.in_flight[endpoint.id] >= self.settings.webhook_endpoint_concurrency:
            return retry(BUSY_DELAY)  # a slow receiver holds its own share of workers only
        self.in_flight[endpoint.id] += 1
        try:
            outcome = await self._send(endpoint, row)
        finally:
            self.in_flight[endpoint.id] -= 1
            if not self.in_flight[endpoint.id]:
                del self.in_flight[endpoint.id]
        return await self._record(row, outcome)

    async def _send(self, endpoint: Endpoint, row: dict[str, Any]) -> Outcome:
        try:
            await self.check(endpoint.url, self.settings.webhook_allow_private)
        except Invalid as exc:  # its name resolves elsewhere now
            return Outcome(None, f"refused: {exc}", 0, refused=True)
        return await self.sender.send(
            endpoint.url, endpoint.secret, message_id(endpoint.id, row["event_id"].split("#")[0]),
            row["payload"],
        )

    async def _record(self, row: dict[str, Any], outcome: Outcome) -> Verdict:
        now = self.clock()
        number = row["attempts"] + 1
        status, verdict, next_at = PENDING, ACK, None
        if outcome.delivered:
            status = DELIVERED
        elif outcome.retryable:
            delay = self.backoff(number, outcome.retry_after)
            next_at = now + timedelta(seconds=delay)
            if next_at > row["created_at"] + timedelta(hours=self.settings.webhook_retry_hours):
                status, next_at = FAILED, None
            else:
                verdict = retry(delay)
        else:
            status = FAILED
        attempt = AttemptRecord(
            number=number, at=now, status_code=outcome.status_code, error=outcome.error,
            duration_ms=outcome.duration_ms, next_attempt_at=next_at,
        )
        async with self.store.write() as tx:
            await tx.record_attempt(
                row["id"], attempt, status, None if status == PENDING else now
            )
        log.info(
            "webhook attempt", delivery_id=str(row["id"]), attempt=number,
            status_code=outcome.status_code, error=outcome.error, outcome=status,
            retry_in=round(verdict.delay, 2) if verdict is not ACK else None,
        )
        if status == FAILED:
            log.warning("webhook delivery given up", delivery_id=str(row["id"]),
                        attempts=number, error=outcome.error)
        return verdict

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Return the delay before the try after ``attempt``: the receiver's, or exponential."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.settings.webhook_retry_max)
        base: float = self.settings.webhook_retry_initial * 2.0 ** (attempt - 1)
        return min(base, self.settings.webhook_retry_max) * random.uniform(0.8, 1.2)

    @staticmethod
    async def _own(tx: Any, user_id: str, endpoint_id: UUID) -> Endpoint:
        endpoint: Endpoint | None = await tx.endpoint(endpoint_id)
        if endpoint is None or endpoint.user_id != user_id:
            raise NotFound("no such webhook endpoint")
        return endpoint


def public(endpoint: Endpoint) -> EndpointRecord:
    """Return an endpoint without its secret."""
    return EndpointRecord.model_validate(endpoint.model_dump(exclude={"secret"}))

