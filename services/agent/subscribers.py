"""The agent's edges on the bus: the job consumer's config, pings and the tool list."""

from collections.abc import Callable

import structlog
from faststream.nats import NatsBroker
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts import subjects
from contracts.base import Pong
from contracts.tools import ListTools, ToolList
from services.agent.config import Settings
from services.agent.toolbox import Toolbox

log = structlog.get_logger("chatbus.agent")


def consumer_config(settings: Settings) -> ConsumerConfig:
    """Describe the durable pull consumer every replica shares.

    Deliveries are not capped (``max_deliver=-1``): a job that waited long for its
    turn in its session is redelivered without counting an attempt; attempts are
    counted in the job state and bounded by ``AGENT_MAX_ATTEMPTS``.
    """
    return ConsumerConfig(
        name=subjects.AGENT_DURABLE,
        durable_name=subjects.AGENT_DURABLE,
        filter_subject=subjects.CHAT_REQUESTED,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.agent_ack_wait,
        max_deliver=-1,
        max_ack_pending=settings.agent_max_ack_pending,
    )


async def ensure_consumer(broker: NatsBroker, settings: Settings) -> None:
    """Create the consumer, or bring an existing one's limits up to date."""
    js = broker.connection.jetstream()
    await js.add_consumer(subjects.CHAT_JOBS_STREAM.name, consumer_config(settings))


def register(
    broker: NatsBroker, settings: Settings, toolbox: Toolbox, offers_tools: Callable[[], bool]
) -> None:
    """Attach the agent's core-NATS subscribers to the broker.

    ``offers_tools`` tells whether the model takes tools at all (a server may refuse them).
    """

    @broker.subscriber(subjects.AGENT_PING, queue=subjects.AGENT_QUEUE)
    async def on_ping() -> Pong:
        """Tell the caller this replica answers."""
        return Pong(service="agent", instance=settings.instance)

    @broker.subscriber(subjects.AGENT_TOOLS_LIST, queue=subjects.AGENT_QUEUE)
    async def on_list_tools(query: ListTools) -> ToolList:
        """List the tools the model can call now (none when its server refuses tools)."""
        if not offers_tools():
            return ToolList()
        return ToolList(items=tuple(toolbox.describe()))
