"""In-memory stand-ins for the agent's tests: job store, lanes bucket, history, model, bus.

Holds no tests of its own; the agent's unit tests import it.
"""

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from services.runtime.lanes import Lanes

from contracts import subjects
from contracts.chat import ChatCompleted, ChatDelta, ChatFailed, JobLane, JobState, RequestChat
from contracts.deadletter import DeadLetter
from contracts.history import AppendMessage, ListMessages, MessageRecord
from services.agent.config import Settings
from services.agent.errors import JobConflict
from services.agent.jobs import Versioned
from services.agent.llm import ChatMessage
from services.agent.service import JobRunner
from services.runtime.bus import RequestMeta
from tests.kv import FakeKV

T0 = datetime(2025, 1, 1, tzinfo=UTC)


class FakeJobs:
    def __init__(self) -> None:
        self.states: dict[UUID, Versioned] = {}
        self.revision = 0
        self.writes: list[JobState] = []
        self.wrote = asyncio.Event()

    def put(self, state: JobState) -> None:
        self.revision += 1
        self.states[state.id] = Versioned(state, self.revision)
        self.writes.append(state)
        self.wrote.set()

    def state(self, job_id: UUID) -> JobState:
        return self.states[job_id].state

    def change(self, job_id: UUID, **changes: Any) -> None:
        """Write as another party would (the gateway), bumping the revision."""
        self.put(self.state(job_id).model_copy(update=changes))

    async def get(self, job_id: UUID) -> Versioned | None:
        return self.states.get(job_id)

    async def create(self, state: JobState) -> Versioned:
        if state.id in self.states:
            raise JobConflict("exists")
        self.put(state)
        return self.states[state.id]

    async def update(self, state: JobState, revision: int) -> Versioned:
        if self.states[state.id].revision != revision:
            raise JobConflict("changed")
        self.put(state)
        return self.states[state.id]


class FakeHistory:
    def __init__(self, recent: Sequence[MessageRecord] = ()) -> None:
        self.recent = list(recent)
        self.queries: list[ListMessages] = []
        self.appended: list[AppendMessage] = []
        self.metas: list[RequestMeta] = []
        self.error: Exception | None = None
        self.on_append: Any = None  # called after a reply is stored

    async def list_messages(self, query: ListMessages, meta: RequestMeta) -> list[MessageRecord]:
        self.queries.append(query)
        self.metas.append(meta)
        if self.error is not None:
            raise self.error
        return self.recent[: query.limit]

    async def append_message(self, command: AppendMessage, meta: RequestMeta) -> MessageRecord:
        self.appended.append(command)
        self.metas.append(meta)
        if self.on_append is not None:
            self.on_append()
        return MessageRecord(
            id=uuid.uuid4(), session_id=command.session_id, user_id=command.user_id,
            role=command.role, content=command.content, created_at=T0, job_id=command.job_id,
        )


class FakeLLM:
    def __init__(self, pieces: Sequence[str] = ("Hello ", "there"), error: Exception | None = None):
        self.pieces = list(pieces)
        self.error = error
        self.prompts: list[list[ChatMessage]] = []
        self.gate: asyncio.Event | None = None  # when set, the model waits for it before writing
        self.called = asyncio.Event()
        self.closed = asyncio.Event()  # the stream was closed (finished or cancelled)

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
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


class FakeEvents:
    def __init__(self) -> None:
        self.deltas: list[ChatDelta] = []
        self.completed_events: list[ChatCompleted] = []
        self.failed_events: list[ChatFailed] = []
        self.letters: list[tuple[DeadLetter, str | None]] = []

    async def delta(self, delta: ChatDelta, meta: RequestMeta) -> None:
        self.deltas.append(delta)

    async def completed(self, event: ChatCompleted, meta: RequestMeta) -> None:
        self.completed_events.append(event)

    async def failed(self, event: ChatFailed, meta: RequestMeta) -> None:
        self.failed_events.append(event)

    async def dead_letter(self, letter: DeadLetter, meta: RequestMeta, msg_id: str | None) -> None:
        self.letters.append((letter, msg_id))


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


def make_request(content: str = "hi there", session_id: UUID | None = None) -> RequestChat:
    return RequestChat(
        job_id=uuid.uuid4(), user_id="u1", session_id=session_id or uuid.uuid4(),
        persona="friend", message_id=uuid.uuid4(), content=content, created_at=T0,
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
    llm: FakeLLM
    events: FakeEvents
    kv: FakeKV
    lanes: Lanes

    async def queue(self, request: RequestChat) -> None:
        """Do what the gateway does: a queued state, then the job at the end of both lanes."""
        self.jobs.put(queued(request))
        await self.lanes.append(subjects.user_lane(request.user_id), request.job_id)
        await self.lanes.append(subjects.session_lane(request.session_id), request.job_id)

    async def lane(self, key: str) -> tuple[UUID, ...]:
        lane: JobLane = (await self.lanes.read(key))[0]
        return lane.jobs


def rig(llm: FakeLLM | None = None, history: FakeHistory | None = None, **settings: Any) -> Rig:
    config = Settings(
        openai_base_url="http://sim.invalid/v1", instance="test", agent_retry_delay=0.5,
        **settings,
    )
    kv = FakeKV()
    lanes = Lanes(kv)  # type: ignore[arg-type]
    jobs, events = FakeJobs(), FakeEvents()
    history, llm = history or FakeHistory(), llm or FakeLLM()
    runner = JobRunner(config, jobs, history, llm, events, lanes)
    return Rig(runner, jobs, history, llm, events, kv, lanes)

