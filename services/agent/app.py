"""Wire the agent: broker, job store, cancel watch, model client, runner, consumer and pings."""

import logging
from uuid import UUID

import structlog
from faststream import FastStream

from contracts import subjects
from services.agent.bus import BusHistory, JobEventPublisher
from services.agent.cancels import CancelWatch
from services.agent.config import Settings
from services.agent.consumer import JobConsumer
from services.agent.generate import Generator
from services.agent.jobs import KvJobStore
from services.agent.llm import OpenAIChat
from services.agent.mcp import McpServer
from services.agent.metrics import AgentMetrics
from services.agent.ports import Lookups
from services.agent.recall import BusMemory, BusSearch
from services.agent.service import JobRunner
from services.agent.subscribers import ensure_consumer, register
from services.agent.toolbox import Toolbox
from services.agent.tools import DEFAULT_TOOLS
from services.runtime.bus import ensure_streams, make_broker
from services.runtime.deadletter import DeadLetterPublisher
from services.runtime.telemetry import Observability, Telemetry

log = structlog.get_logger("chatbus.agent")
STREAMS = (subjects.CHAT_JOBS_STREAM, subjects.JOB_EVENTS_STREAM, subjects.DEADLETTER_STREAM)


def create_app(settings: Settings, telemetry: Telemetry | None = None) -> FastStream:
    """Build the agent application; nothing connects until it starts.

    On SIGTERM FastStream runs ``on_shutdown`` before it stops the broker: the
    consumer stops fetching, running jobs get ``AGENT_SHUTDOWN_GRACE`` seconds,
    and the rest are written back as queued and nak'ed for another replica.
    """
    observability = Observability(settings, "agent", telemetry=telemetry)
    metrics = AgentMetrics(observability, settings.llm_model)
    broker = make_broker(settings, "agent", observability.broker_middlewares())
    timeout = settings.bus_request_timeout
    bus = observability.bus_client(broker, timeout)
    store = KvJobStore(timeout)
    usage = metrics.llm.record_usage if settings.llm_stream_usage else None
    llm = OpenAIChat(settings, on_usage=usage)
    history = BusHistory(bus, timeout)
    events = JobEventPublisher(broker, timeout)
    lookups = Lookups(memories=BusMemory(bus, timeout), search=BusSearch(bus, timeout))
    mcp_servers = [McpServer(config, settings) for config in settings.agent_mcp_servers]
    toolbox = Toolbox(DEFAULT_TOOLS, mcp_servers, settings.agent_mcp_result_chars)
    generator = Generator(settings, history, metrics.model(llm), events, lookups, toolbox)

    def stop_job(job_id: UUID) -> None:
        runner.cancel(job_id)

    cancels = CancelWatch(stop_job)
    runner = JobRunner(
        settings, jobs=metrics.job_store(store), history=history, generator=generator,
        events=events, cancels=cancels,
    )
    register(broker, settings, toolbox, lambda: llm.sends("tools"))
    dead_letters = DeadLetterPublisher(bus, "agent")
    consumer = JobConsumer(broker, runner, settings, dead_letters, observe=metrics.delivery)

    async def prepare() -> None:
        await broker.connect()
        await ensure_streams(broker, STREAMS, settings)
        await ensure_consumer(broker, settings)
        await store.open(broker)
        await cancels.start(broker)  # known before the first job is taken

    async def begin() -> None:
        await broker.connection.flush()
        observability.start()
        for server in mcp_servers:  # in the background: an absent server delays nothing
            server.start()
        await consumer.start()
        log.info(
            "agent started",
            model=settings.llm_model,
            base_url=settings.openai_base_url or "https://api.openai.com/v1",
            concurrency=settings.agent_concurrency,
            max_attempts=settings.agent_max_attempts,
            mcp_servers=[server.name for server in mcp_servers],
        )

    async def drain() -> None:
        await consumer.stop()
        await cancels.stop()
        log.info("agent stopped taking jobs; none left running")

    async def close() -> None:
        for server in mcp_servers:
            await server.stop()
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
