"""The agent's metrics and job spans, hooked around its ports without touching their code.

In the agent's registry, beside the bus metrics every service has:

- ``chatbus_agent_jobs_total{status}``: jobs this replica ended (completed,
  failed, cancelled), counted where their final state is written;
- ``chatbus_agent_redeliveries_total``: job deliveries after the first
  (retries, waits for the session's turn, jobs of a replica that died);
- ``chatbus_llm_*``: time to first token, call time by outcome, tokens.

Each delivery runs in a span continuing the trace of whoever queued the job
(the trace context rides in the message's headers).
"""

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from nats.aio.msg import Msg
from prometheus_client import Counter

from contracts.chat import JobState
from services.agent.llm import ChatMessage, ToolCallDelta
from services.agent.ports import LLM, JobStore
from services.runtime.kv import Versioned
from services.runtime.metrics import LLMMetrics
from services.runtime.telemetry import Observability


class AgentMetrics:
    """Counters of jobs and deliveries, model timings, and the span of each delivery."""

    def __init__(self, observability: Observability, model: str) -> None:
        registry = observability.metrics.registry
        self.telemetry = observability.telemetry
        self.jobs = Counter(
            "chatbus_agent_jobs",
            "Jobs this replica ended, by final status (completed, failed, cancelled).",
            ["status"],
            registry=registry,
        )
        self.redeliveries = Counter(
            "chatbus_agent_redeliveries",
            "Job deliveries after the first: retries, long waits for the session's "
            "turn, jobs of a replica that stopped.",
            registry=registry,
        )
        self.llm = observability.metrics.llm(model)

    @contextmanager
    def delivery(self, msg: Msg) -> Iterator[None]:
        """Count a redelivery and run the delivery in a span continuing the sender's trace."""
        if (msg.metadata.num_delivered or 1) > 1:
            self.redeliveries.inc()
        with self.telemetry.consumer_span(f"{msg.subject} process", msg.headers):
            yield

    def job_store(self, store: JobStore) -> JobStore:
        """Return ``store`` counting the final states written through it."""
        return ObservedJobStore(store, self.jobs)

    def model(self, llm: LLM) -> LLM:
        """Return ``llm`` with its calls timed."""
        return ObservedLLM(llm, self.llm)


class ObservedJobStore:
    """A job store that counts each final state it writes, by status."""

    def __init__(self, inner: JobStore, ended: Counter) -> None:
        self.inner = inner
        self.ended = ended

    async def get(self, job_id: UUID) -> Versioned[JobState] | None:
        """Return the job's state."""
        return await self.inner.get(job_id)

    async def create(self, state: JobState) -> Versioned[JobState]:
        """Store a new job."""
        return await self.inner.create(state)

    async def wait_ended(self, job_id: UUID, timeout: float) -> bool:
        """Watch a job until it ends."""
        return await self.inner.wait_ended(job_id, timeout)

    async def update(self, state: JobState, revision: int) -> Versioned[JobState]:
        """Replace the job's state; count it when it is final."""
        written = await self.inner.update(state, revision)
        if state.finished:
            self.ended.labels(state.status).inc()
        return written


class ObservedLLM:
    """A model whose calls are timed: first piece, whole call, outcome."""

    def __init__(self, inner: LLM, metrics: LLMMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> AsyncGenerator[str | ToolCallDelta, None]:
        """Yield what the model streams, timing it."""
        started = time.perf_counter()
        first = True
        outcome = "error"
        pieces = self.inner.stream(messages, tools) if tools else self.inner.stream(messages)
        try:
            async for piece in pieces:
                if first:
                    first = False
                    self.metrics.observe_first_token(time.perf_counter() - started)
                yield piece
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            await pieces.aclose()
            self.metrics.observe_call(time.perf_counter() - started, outcome)
