"""Wire the agent: broker, job store, lanes, model client, runner, consumer and subscribers."""

import logging

import structlog
from faststream import FastStream

from contracts import subjects
from services.agent.bus import BusEvents, BusHistory
from services.agent.config import Settings
from services.agent.consumer import JobConsumer
from services.agent.jobs import KvJobStore, KvLanes
from services.agent.llm import OpenAIChat
from services.agent.metrics import AgentMetrics
from services.agent.ports import Lookups
from services.agent.recall import BusMemory, BusSearch
from services.agent.service import JobRunner
from services.agent.subscribers import ensure_consumer, register
from services.agent.tools import DEFAULT_TOOLS
from services.runtime.bus import BusClient, ensure_streams, make_broker
from services.runtime.telemetry import Observability, Telemetry

log = structlog.get_logger("chatbus.agent")
STREAMS = (subjects.CHAT_JOBS_STREAM, subjects.CHAT_EVENTS_STREAM, subjects.DEADLETTER_STREAM)


def create_app(settings: Settings, telemetry: Telemetry | None = None) -> FastStream:
    """Build the agent application; nothing connects until it starts.

    On SIGTERM FastStream runs ``on_shutdown`` before it stops the broker: the
    consumer stops fetching, running jobs get ``AGENT_SHUTDOWN_GRACE`` seconds,
    and the rest are written back as queued and nak'ed for another replica.
    """
    observability = Observability(settings, "agent", telemetry=telemetry)
    metrics = AgentMetrics(observability, settings.llm_model)
    broker = make_broker(settings, "agent", observability.broker_middlewares())
    bus = BusClient(broker, settings.bus_request_timeout)
    store = KvJobStore()
    lanes = KvLanes()
    usage = metrics.llm.record_usage if settings.llm_stream_usage else None
    llm = OpenAIChat(settings, on_usage=usage)
    runner = JobRunner(
        settings,
        jobs=metrics.job_store(store),
        history=BusHistory(bus, settings.bus_request_timeout),
        llm=metrics.model(llm),
        events=BusEvents(bus, settings.bus_request_timeout),
        lanes=lanes,
        lookups=Lookups(
            memories=BusMemory(bus, settings.bus_request_timeout),
            search=BusSearch(bus, settings.bus_request_timeout),
        ),
        tools=DEFAULT_TOOLS,
    )
    register(broker, runner, settings)
    consumer = JobConsumer(broker, runner, settings, observe=metrics.delivery)

    async def prepare() -> None:
        await broker.connect()
        await ensure_streams(broker, STREAMS)
        await ensure_consumer(broker, settings)
        await store.open(broker)
        await lanes.open(broker)

    async def begin() -> None:
        # After broker.start(): the cancel subscriber listens before the first job runs.
        await broker.connection.flush()
        observability.start()
        await consumer.start()
        log.info(
            "agent started",
            model=settings.llm_model,
            base_url=settings.openai_base_url or "https://api.openai.com/v1",
            concurrency=settings.agent_concurrency,
            max_attempts=settings.agent_max_attempts,
        )

    async def drain() -> None:
        await consumer.stop()
        log.info("agent stopped taking jobs; none left running")

    async def close() -> None:
        await llm.close()
        await observability.stop()

    return FastStream(
        broker,
        logger=logging.getLogger("chatbus.agent.app"),
        on_startup=[prepare],
        after_startup=[begin],
        on_shutdown=[drain],
        after_shutdown=[close],
    )
