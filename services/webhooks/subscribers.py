"""Bus edges of the webhooks service: requests answered with replies, events and deliveries
taken from three durable pull consumers and settled by the verdict of the service."""

from uuid import UUID

import structlog
from faststream.nats import NatsMessage, NatsRouter
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from contracts import subjects
from contracts.base import Ping, Pong
from contracts.chat import JobState
from contracts.memory import MemoriesStored
from contracts.webhooks import (
    CreateEndpoint,
    DeleteEndpoint,
    DeliverWebhook,
    DeliveryPage,
    DeliveryReply,
    EndpointCreated,
    EndpointDeleted,
    EndpointPage,
    ListDeliveries,
    ListEndpoints,
    ResendDelivery,
)
from services.runtime.answer import RequestAnswerer, describe
from services.runtime.bus import BusClient
from services.runtime.deadletter import DeadLetterPublisher
from services.runtime.meta import RequestMeta
from services.runtime.settle import ACK, Verdict, give_up
from services.webhooks.config import Settings
from services.webhooks.errors import WebhookError, to_bus_error
from services.webhooks.service import WebhookService

log = structlog.get_logger("chatbus.webhooks")
EVENT_ACK_WAIT = 30.0
DELIVER_MAX_ACK_PENDING = 50_000


def consumer_configs(settings: Settings) -> list[tuple[str, ConsumerConfig]]:
    """Describe the three durable pull consumers (stream, config), shared by every replica.

    Deliveries are not capped by the server: the service gives up on a delivery by its
    age (``WEBHOOK_RETRY_HOURS``), and an event's fan-out is retried until it is stored.
    """
    final = [subjects.job_event("*", kind) for kind in subjects.JOB_FINAL_KINDS]

    def config(
        durable: str, ack_wait: float, filters: list[str], max_ack_pending: int | None = None
    ) -> ConsumerConfig:
        one = filters[0] if len(filters) == 1 else None
        return ConsumerConfig(
            name=durable, durable_name=durable, deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, max_deliver=-1,
            filter_subject=one, filter_subjects=None if one else filters,
            max_ack_pending=max_ack_pending,
        )

    return [
        (subjects.JOB_EVENTS_STREAM.name,
         config(subjects.WEBHOOKS_JOBS_DURABLE, EVENT_ACK_WAIT, final)),
        (subjects.MEMORY_EVENTS_STREAM.name,
         config(subjects.WEBHOOKS_MEMORY_DURABLE, EVENT_ACK_WAIT, [subjects.MEMORY_STORED])),
        (subjects.WEBHOOK_DELIVERIES_STREAM.name,
         config(subjects.WEBHOOKS_DELIVER_DURABLE, settings.ack_wait,
                [subjects.WEBHOOK_DELIVER], DELIVER_MAX_ACK_PENDING)),
    ]


class BusQueue:
    """Queue a delivery's first try: one message on the WEBHOOK_DELIVERIES stream."""

    def __init__(self, bus: BusClient, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    async def deliver(self, delivery_id: UUID) -> None:
        """Publish the delivery; its id is the message id (a repeat is dropped)."""
        await self.bus.publish(
            subjects.WEBHOOK_DELIVER, DeliverWebhook(delivery_id=delivery_id), RequestMeta(),
            stream=subjects.WEBHOOK_DELIVERIES_STREAM.name, msg_id=str(delivery_id),
            timeout=self.timeout,
        )


class Handlers:
    """Turn each message of the pull consumers into a service call and a verdict."""

    def __init__(self, service: WebhookService) -> None:
        self.service = service

    async def job_event(self, msg: Msg) -> Verdict:
        """Fan a job's final event out."""
        try:
            state = JobState.model_validate_json(msg.data)
        except ValidationError as exc:
            return give_up(f"not a JobState: {describe(exc)}")
        if state.finished:
            await self.service.job_ended(state)
        return ACK

    async def memories_stored(self, msg: Msg) -> Verdict:
        """Fan stored memories out."""
        try:
            event = MemoriesStored.model_validate_json(msg.data)
        except ValidationError as exc:
            return give_up(f"not a MemoriesStored: {describe(exc)}")
        await self.service.memories_stored(event)
        return ACK

    async def deliver(self, msg: Msg) -> Verdict:
        """Make one attempt at a delivery."""
        try:
            command = DeliverWebhook.model_validate_json(msg.data)
        except ValidationError as exc:
            return give_up(f"not a DeliverWebhook: {describe(exc)}")
        return await self.service.attempt(command.delivery_id)


def build_router(
    settings: Settings, service: WebhookService, deadletters: DeadLetterPublisher
) -> NatsRouter:
    """Wire the request subjects to the service, answered by one replica of the queue group."""
    router = NatsRouter()
    answer = RequestAnswerer("webhooks", deadletters, WebhookError, to_bus_error).answer
    queue, workers = subjects.WEBHOOKS_QUEUE, settings.request_concurrency

    @router.subscriber(subjects.WEBHOOKS_ENDPOINT_CREATE, queue=queue, max_workers=workers)
    async def create(msg: NatsMessage) -> EndpointCreated:
        return await answer(msg, CreateEndpoint, EndpointCreated, service.create_endpoint)

    @router.subscriber(subjects.WEBHOOKS_ENDPOINT_LIST, queue=queue, max_workers=workers)
    async def list_endpoints(msg: NatsMessage) -> EndpointPage:
        return await answer(msg, ListEndpoints, EndpointPage, service.list_endpoints)

    @router.subscriber(subjects.WEBHOOKS_ENDPOINT_DELETE, queue=queue, max_workers=workers)
    async def delete(msg: NatsMessage) -> EndpointDeleted:
        return await answer(msg, DeleteEndpoint, EndpointDeleted, service.delete_endpoint)

    @router.subscriber(subjects.WEBHOOKS_DELIVERY_LIST, queue=queue, max_workers=workers)
    async def list_deliveries(msg: NatsMessage) -> DeliveryPage:
        return await answer(msg, ListDeliveries, DeliveryPage, service.list_deliveries)

    @router.subscriber(subjects.WEBHOOKS_DELIVERY_RESEND, queue=queue, max_workers=workers)
    async def resend(msg: NatsMessage) -> DeliveryReply:
        return await answer(msg, ResendDelivery, DeliveryReply, service.resend)

    @router.subscriber(subjects.WEBHOOKS_PING, queue=queue)
    async def ping(msg: NatsMessage) -> Pong:
        return await answer(msg, Ping, Pong, service.ping)

    return router
