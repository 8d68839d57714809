"""The whole stack in this process over a private NATS server, for tests of the job path.

Real services, each with its own connection: the simulated model, history and memory
(SQLite), one agent, and two gateway replicas served by uvicorn on real ports, so an
SSE stream can be cut and resumed on the other replica. :class:`SentCounter` counts
what one service's connection sends, by kind, to pin the bus round trips of a job.

Holds no tests of its own.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from faststream import FastStream
from nats.aio.client import Client

from services.agent.app import create_app as create_agent
from services.agent.config import Settings as AgentSettings
from services.gateway.app import create_app as create_gateway
from services.gateway.auth import mint_token
from services.gateway.config import Settings as GatewaySettings
from services.history.app import create_app as create_history
from services.history.config import Settings as HistorySettings
from services.launcher.natsserver import NatsServer, free_port
from services.memory.app import create_app as create_memory
from services.memory.config import Settings as MemorySettings
from services.simllm.config import Settings as SimSettings
from services.simllm.server import running as running_sim

SECRET = "job-path-test-secret-long-enough-for-hs256"
QUIET: dict[str, Any] = {"otel_exporter_otlp_endpoint": None, "metrics_port": None}


@dataclass
class SentCounter:
    """Count the messages one NATS connection sends, by kind.

    - ``request``: a message with a reply subject (a request, a JetStream publish, a
      bucket read or write, a consumer create): one round trip each;
    - ``ack``: a JetStream acknowledgement (ack, nak, term, in-progress);
    - ``fetch``: a pull request for a batch of jobs (shared by the batch);
    - ``event``: a one-way publish (job events), no answer awaited.
    """

    sent: list[tuple[str, str]] = field(default_factory=list)

    def attach(self, connection: Client) -> None:
        """Wrap the connection's ``publish``, through which every message it sends goes."""
        original = connection.publish

        async def publish(subject: str, payload: bytes = b"", reply: str = "", **kw: Any) -> None:
            self.sent.append((self.kind(subject, reply), subject))
            await original(subject, payload, reply=reply, **kw)

        connection.publish = publish  # type: ignore[method-assign]

    @staticmethod
    def kind(subject: str, reply: str) -> str:
        """Classify one sent message."""
        if subject.startswith("$JS.ACK."):
            return "ack"
        if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            return "fetch"
        return "request" if reply else "event"

    def mark(self) -> int:
        """Return a position to count from."""
        return len(self.sent)

    def since(self, mark: int, *kinds: str) -> list[str]:
        """Return the subjects of the messages of ``kinds`` sent after ``mark``."""
        return [subject for kind, subject in self.sent[mark:] if kind in kinds]


@dataclass
class JobStack:
    """Where the stack answers, and a counter on each service's connection."""

    gateways: list[str]
    counters: dict[str, SentCounter]
    agent: FastStream
    sim_url: str
    nats_url: str
    history: HistorySettings

    def token(self, user: str) -> dict[str, str]:
        """Return the Authorization header of a token for ``user``."""
        return {"Authorization": f"Bearer {mint_token(SECRET, user)}"}


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve a FastAPI app with uvicorn on a free port; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait([task], timeout=10)


@asynccontextmanager
async def job_stack(
    tmp_path: Path,
    *,
    tokens_per_second: float = 0,
    agent: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    with_agent: bool = True,
    with_history: bool = True,
) -> AsyncIterator[JobStack]:
    """Start the stack; ``agent`` and ``gateway`` override those services' settings.

    Without the agent, a test plays it by hand; without history, the gateways find
    nobody to admit messages.
    """
    server = NatsServer(tmp_path / "nats")
    server.start()
    async with AsyncExitStack() as stack:
        stack.callback(server.stop)
        url = server.url
        sim = SimSettings(
            simllm_port=free_port(), llm_sim_latency=0.01,
            llm_sim_tokens_per_second=tokens_per_second,
        )
        sim_url = await stack.enter_async_context(running_sim(sim))
        db = tmp_path / "db"
        db.mkdir()
        history = HistorySettings(
            **QUIET, nats_url=url, database_url=f"sqlite+aiosqlite:///{db}/history.db",
            redis_url=None, instance="jp-history",
        )
        memory = MemorySettings(
            **QUIET, nats_url=url, database_url=f"sqlite+aiosqlite:///{db}/memory.db",
            openai_base_url=sim_url, instance="jp-memory",
        )
        agent_settings = AgentSettings(**{
            **QUIET, "nats_url": url, "openai_base_url": sim_url, "llm_model": "chatbus-sim",
            "llm_max_retries": 0, "agent_concurrency": 100, "agent_ack_wait": 10,
            "instance": "jp-agent", **(agent or {}),
        })
        if with_history:
            await stack.enter_async_context(create_history(history))
        await stack.enter_async_context(create_memory(memory))
        agent_app = create_agent(agent_settings)
        counters = {"agent": SentCounter()}
        if with_agent:
            await stack.enter_async_context(agent_app)
            counters["agent"].attach(agent_app.broker.connection)  # type: ignore[union-attr]
        urls = []
        for index in range(2):
            app = create_gateway(GatewaySettings(**{
                **QUIET, "nats_url": url, "jwt_secret": SECRET, "jwt_audience": None,
                "jwt_issuer": None, "instance": f"jp-gateway-{index}", **(gateway or {}),
            }))
            urls.append(await stack.enter_async_context(serving(app)))
            counter = counters[f"gateway-{index}"] = SentCounter()
            counter.attach(app.state.bus.connection)
        yield JobStack(urls, counters, agent_app, sim_url, url, history)


