"""In-memory stand-ins for the agent's ports: job store, history, model, job events, delivery.

Holds no tests of its own; the agent's unit tests import it.
"""

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from contracts.chat import ChatDelta, JobState, RequestChat, ToolCalled, ToolReturned
from contracts.history import AppendMessage, EndJob, ListMessages, MessageRecord
from services.agent.config import Settings
from services.agent.errors import EventError, JobConflict
from services.agent.generate import Generator
from services.agent.llm import ChatMessage, ToolCallDelta
from services.agent.ports import LLM, Lookups
from services.agent.service import JobRunner
from services.agent.tools import ToolRegistry
from services.runtime.kv import Versioned
from services.runtime.meta import RequestMeta

T0 = datetime(2025, 1, 1, tzinfo=UTC)
WAIT = 10.0


class FakeJobs:
    """Job states with compare-and-set on a revision; every read, write and wait recorded."""

    def __init__(self) -> None:
        self.states: dict[UUID, Versioned[JobState]] = {}
        self.revision = 0
        self.writes: list[JobState] = []
        self.gets: list[UUID] = []
        self.waits: list[UUID] = []
        self.waiting = asyncio.Event()  # a job started waiting for another one to end
        self._changed = asyncio.Event()

    def put(self, state: JobState) -> int:
        """Store a state whatever was there; return its revision."""
        self.revision += 1
        self.states[state.id] = Versioned(state, self.revision)
        self.writes.append(state)
        self._changed.set()
        return self.revision

    def state(self, job_id: UUID) -> JobState:
        """Return a job's latest state."""
        return self.states[job_id].value

    def change(self, job_id: UUID, **changes: Any) -> None:
        """Write as another party would, bumping the revision."""
        self.put(self.state(job_id).model_copy(update=changes))

    async def get(self, job_id: UUID) -> Versioned[JobState] | None:
        self.gets.append(job_id)
        return self.states.get(job_id)

    async def create(self, state: JobState) -> Versioned[JobState]:
        if state.id in self.states:
            raise JobConflict("exists")
        self.put(state)
        return self.states[state.id]

    async def update(self, state: JobState, revision: int) -> Versioned[JobState]:
        current = self.states.get(state.id)
        if current is None or current.revision != revision:
            raise JobConflict("changed")
        self.put(state)
        return self.states[state.id]

    async def wait_ended(self, job_id: UUID, timeout: float) -> bool:
        """Wake on every write until the job ended or is gone; False when ``timeout`` passed."""
        self.waits.append(job_id)
        self.waiting.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            current = self.states.get(job_id)
            if current is None or current.value.finished:
                return True
            if (remaining := deadline - loop.time()) <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass


class FakeHistory:
    """History's messages of one job's session, and the jobs it was told ended."""

    def __init__(self, recent: Sequence[MessageRecord] = ()) -> None:
        self.recent = list(recent)
        self.queries: list[ListMessages] = []
        self.appended: list[AppendMessage] = []
        self.ended: list[EndJob] = []
        self.metas: list[RequestMeta] = []
        self.error: Exception | None = None  # raised by list_messages
        self.append_error: Exception | None = None
        self.on_append: Any = None  # called once a reply is stored

    async def list_messages(self, query: ListMessages, meta: RequestMeta) -> list[MessageRecord]:
        self.queries.append(query)
        self.metas.append(meta)
        if self.error is not None:
            raise self.error
        return self.recent[: query.limit]

    async def append_message(self, command: AppendMessage, meta: RequestMeta) -> MessageRecord:
        self.metas.append(meta)
        if self.append_error is not None:
            raise self.append_error
        self.appended.append(command)
        if self.on_append is not None:
            self.on_append()
        return MessageRecord(
            id=uuid.uuid4(), session_id=command.session_id, user_id=command.user_id,
            role=command.role, content=command.content, created_at=T0, job_id=command.job_id,
        )

    async def end_job(self, command: EndJob, meta: RequestMeta) -> None:
        self.metas.append(meta)
        self.ended.append(command)


class FakeLLM:
    """A model that writes ``pieces``, or fails; ``gate`` holds it until set."""

    def __init__(self, pieces: Sequence[str] = ("Hello ", "there"), error: Exception | None = None):
        self.pieces = list(pieces)
        self.error = error
        self.prompts: list[list[ChatMessage]] = []
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()
        self.closed = asyncio.Event()  # the stream was closed (finished or cancelled)

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> AsyncGenerator[str | ToolCallDelta, None]:
        self.prompts.append(list(messages))
        self.called.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise self.error
            for piece in self.pieces:
                yield piece
        finally:
            self.closed.set()


def hanging_llm() -> FakeLLM:
    """Return a model that writes nothing until the test opens its gate (or it is stopped)."""
    llm = FakeLLM()
    llm.gate = asyncio.Event()
    return llm


class FakeEvents:
    """Every job event in the order published; ``failures`` makes a kind fail that many times."""

    def __init__(self) -> None:
        self.log: list[tuple[str, BaseModel]] = []
        self.failures: dict[str, int] = {}

    def of(self, kind: str) -> list[Any]:
        """Return the events of one kind, in order."""
        return [event for k, event in self.log if k == kind]

    @property
    def statuses(self) -> list[JobState]:
        return self.of("status")

    @property
    def deltas(self) -> list[ChatDelta]:
        return self.of("delta")

    @property
    def finals(self) -> list[JobState]:
        return self.of("final")

    async def status(self, state: JobState, meta: RequestMeta) -> None:
        self._record("status", state)

    async def delta(self, delta: ChatDelta, meta: RequestMeta) -> None:
        self._record("delta", delta)

    async def tool_called(self, event: ToolCalled, meta: RequestMeta) -> None:
        self._record("tool_call", event)

    async def tool_returned(self, event: ToolReturned, meta: RequestMeta) -> None:
        self._record("tool_result", event)

    async def final(self, state: JobState, meta: RequestMeta) -> None:
        self._record("final", state)

    def _record(self, kind: str, event: BaseModel) -> None:
        if self.failures.get(kind, 0) > 0:
            self.failures[kind] -= 1
            raise EventError(f"{kind} not published")
        self.log.append((kind, event))


@dataclass
class FakeDelivery:
    body: bytes
    num_delivered: int = 1
    subject: str = "chat.requested"
    headers: Mapping[str, str] = field(
        default_factory=lambda: {"Chatbus-Request-Id": "req-1", "Chatbus-User-Id": "u1"}
    )
    beats: int = 0
    beat: asyncio.Event = field(default_factory=asyncio.Event)

    async def in_progress(self) -> None:
        self.beats += 1
        self.beat.set()


def make_request(
    content: str = "hi there",
    session_id: UUID | None = None,
    follows: UUID | None = None,
    revision: int = 0,
) -> RequestChat:
    return RequestChat(
        job_id=uuid.uuid4(), user_id="u1", session_id=session_id or uuid.uuid4(),
        persona="friend", message_id=uuid.uuid4(), content=content, created_at=T0,
        follows=follows, revision=revision,
    )


def queued(request: RequestChat, **changes: Any) -> JobState:
    state = JobState(
        id=request.job_id, user_id=request.user_id, session_id=request.session_id,
        status="queued", created_at=request.created_at,
    )
    return state.model_copy(update=changes)


def body(request: RequestChat) -> bytes:
    return request.model_dump_json().encode()


@dataclass
class Rig:
    runner: JobRunner
    jobs: FakeJobs
    history: FakeHistory
    llm: Any
    events: FakeEvents
    cancels: set[UUID]

    def queue(self, request: RequestChat, **changes: Any) -> RequestChat:
        """Do what the gateway and history do: a queued record, announced at its revision."""
        revision = self.jobs.put(queued(request, **changes))
        return request.model_copy(update={"revision": revision})

    async def run(self, request: RequestChat, deliveries: int = 1) -> Any:
        """Hand the runner one delivery of ``request`` and return its verdict."""
        return await asyncio.wait_for(
            self.runner.handle(FakeDelivery(body(request), deliveries)), WAIT
        )

    def start(self, request: RequestChat, deliveries: int = 1) -> "asyncio.Task[Any]":
        """Run one delivery in the background."""
        return asyncio.create_task(self.runner.handle(FakeDelivery(body(request), deliveries)))


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_base_url": "http://sim.invalid/v1", "instance": "test", "agent_retry_delay": 0.5,
    }
    return Settings(**(values | overrides))


def rig(
    llm: LLM | None = None,
    history: FakeHistory | None = None,
    lookups: Lookups | None = None,
    tools: ToolRegistry | None = None,
    **overrides: Any,
) -> Rig:
    config = settings(**overrides)
    jobs, events, cancels = FakeJobs(), FakeEvents(), set[UUID]()
    history, model = history or FakeHistory(), llm or FakeLLM()
    generator = Generator(config, history, model, events, lookups, tools)
    runner = JobRunner(config, jobs, history, generator, events, cancels)
    return Rig(runner, jobs, history, model, events, cancels)
