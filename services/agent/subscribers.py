"""The agent's edges on the bus: the shared chat-job consumer and the ping responder."""

from collections.abc import Mapping
from dataclasses import dataclass

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from faststream.nats.message import NatsMessage as RawNatsMessage
from nats.js.api import AckPolicy as ConsumerAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts import subjects
from contracts.base import Pong
from services.agent.config import Settings
from services.agent.errors import Settle
from services.agent.ports import Verdict
from services.agent.service import JobRunner


@dataclass(frozen=True)
class NatsDelivery:
    """A JetStream delivery as the job runner sees it."""

    message: RawNatsMessage

    @property
    def subject(self) -> str:
        """Return the subject the message was published on."""
        return self.message.raw_message.subject

    @property
    def body(self) -> bytes:
        """Return the raw body."""
        return self.message.body

    @property
    def headers(self) -> Mapping[str, str]:
        """Return the NATS headers."""
        return {key: str(value) for key, value in (self.message.headers or {}).items()}

    @property
    def num_delivered(self) -> int:
        """Return how many times JetStream delivered this message, this time included."""
        return int(self.message.raw_message.metadata.num_delivered or 1)

    async def in_progress(self) -> None:
        """Reset the ack deadline."""
        await self.message.in_progress()


async def settle(message: RawNatsMessage, verdict: Verdict) -> None:
    """Apply a verdict: the one mapping from outcomes to ack, nak and term."""
    if verdict.settle is Settle.ACK:
        await message.ack()
    elif verdict.settle is Settle.RETRY:
        await message.nack(delay=verdict.delay)
    else:
        await message.reject()


def consumer_config(settings: Settings) -> ConsumerConfig:
    """Describe the durable pull consumer every replica shares."""
    return ConsumerConfig(
        name=subjects.AGENT_DURABLE,
        durable_name=subjects.AGENT_DURABLE,
        filter_subject=subjects.CHAT_REQUESTED,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=ConsumerAckPolicy.EXPLICIT,
        ack_wait=settings.agent_ack_wait,
        max_deliver=settings.max_deliveries,
        max_ack_pending=settings.agent_max_ack_pending,
    )


async def ensure_consumer(broker: NatsBroker, settings: Settings) -> None:
    """Create the consumer, or bring an existing one's limits up to date."""
    js = broker.connection.jetstream()
    await js.add_consumer(subjects.CHAT_JOBS_STREAM.name, consumer_config(settings))


def register(broker: NatsBroker, runner: JobRunner, settings: Settings) -> None:
    """Attach the agent's subscribers to the broker."""

    # A small fetch batch keeps messages from waiting in the local queue past their ack
    # deadline (faststream #2563); the workers bound the jobs in flight.
    @broker.subscriber(
        subjects.CHAT_REQUESTED,
        stream=JStream(subjects.CHAT_JOBS_STREAM.name, declare=False),
        durable=subjects.AGENT_DURABLE,
        config=consumer_config(settings),
        pull_sub=PullSub(batch_size=settings.agent_fetch_batch, timeout=5.0),
        max_workers=settings.agent_concurrency,
        ack_policy=AckPolicy.MANUAL,
    )
    async def on_chat_requested(message: NatsMessage) -> None:
        """Run one chat job and settle its message."""
        await settle(message, await runner.handle(NatsDelivery(message)))

    @broker.subscriber(subjects.AGENT_PING, queue=subjects.AGENT_QUEUE)
    async def on_ping(message: NatsMessage) -> Pong:
        """Tell the caller this replica answers."""
        return Pong(service="agent", instance=settings.instance)
