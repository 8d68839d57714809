"""Wire the agent: broker, job store, model client, runner and subscribers."""

import logging

import structlog
from faststream import FastStream

from contracts import subjects
from services.agent.bus import BusEvents, BusHistory
from services.agent.config import Settings
from services.agent.jobs import KvJobStore
from services.agent.llm import OpenAIChat
from services.agent.service import JobRunner
from services.agent.subscribers import ensure_consumer, register
from services.runtime.bus import BusClient, ensure_streams, make_broker

log = structlog.get_logger("chatbus.agent")
STREAMS = (subjects.CHAT_JOBS_STREAM, subjects.CHAT_EVENTS_STREAM, subjects.DEADLETTER_STREAM)


def create_app(settings: Settings) -> FastStream:
    """Build the agent application; nothing connects until it starts."""
    broker = make_broker(settings, "agent")
    bus = BusClient(broker, settings.bus_request_timeout)
    store = KvJobStore()
    llm = OpenAIChat(settings)
    runner = JobRunner(
        settings,
        jobs=store,
        history=BusHistory(bus, settings.bus_request_timeout),
        llm=llm,
        events=BusEvents(bus, settings.bus_request_timeout),
    )
    register(broker, runner, settings)

    async def prepare() -> None:
        # FastStream starts subscribers inside broker.start(), after on_startup: connect
        # early so the streams, the consumer and the bucket exist before the first fetch.
        await broker.connect()
        await ensure_streams(broker, STREAMS)
        await ensure_consumer(broker, settings)
        await store.open(broker)
        log.info(
            "agent starting",
            model=settings.llm_model,
            base_url=settings.openai_base_url or "https://api.openai.com/v1",
            concurrency=settings.agent_concurrency,
            max_attempts=settings.agent_max_attempts,
        )

    async def close() -> None:
        await llm.close()

    return FastStream(
        broker,
        logger=logging.getLogger("chatbus.agent.app"),
        on_startup=[prepare],
        after_shutdown=[close],
    )
