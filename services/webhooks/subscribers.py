"""Bus edges of the webhooks service: requests answered with replies, events and deliveries
taken from three durable pull consumers and settled by the verdict of the service."""

from typing import Any
from uuid import UUID

import structlog
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
from services.runtime.answer import Answerer, DeadLetters, Route, describe
from services.runtime.bus import BusClient
from services.runtime.meta import RequestMeta
from services.runtime.responder import Observer, Responder
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


def routes(service: WebhookService) -> list[Route[Any, Any]]:
    """Return the webhooks request subjects and the service method answering each."""
    return [
        Route(subjects.WEBHOOKS_ENDPOINT_CREATE, CreateEndpoint, EndpointCreated,
              service.create_endpoint),
        Route(subjects.WEBHOOKS_ENDPOINT_LIST, ListEndpoints, EndpointPage, service.list_endpoints),
        Route(subjects.WEBHOOKS_ENDPOINT_DELETE, DeleteEndpoint, EndpointDeleted,
              service.delete_endpoint),
        Route(subjects.WEBHOOKS_DELIVERY_LIST, ListDeliveries, DeliveryPage,
              service.list_deliveries),
        Route(subjects.WEBHOOKS_DELIVERY_RESEND, ResendDelivery, DeliveryReply, service.resend),
        Route(subjects.WEBHOOKS_PING, Ping, Pong, service.ping),
    ]


def build_responder(
    settings: Settings,
    service: WebhookService,
    deadletters: DeadLetters,
    observer: Observer | None = None,
) -> Responder:
    """Answer the request subjects on the webhooks queue group, across replicas."""
    return Responder(
        Answerer("webhooks", deadletters, WebhookError, to_bus_error),
        routes(service),
        queue=subjects.WEBHOOKS_QUEUE,
        concurrency=settings.request_concurrency,
        observer=observer,
    )
