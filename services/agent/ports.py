"""The interfaces the job runner takes, so tests hand it fakes."""

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from contracts.chat import ChatCompleted, ChatDelta, ChatFailed, JobLane, JobState
from contracts.deadletter import DeadLetter
from contracts.history import AppendMessage, ListMessages, MessageRecord, SearchMessages
from contracts.memory import MemoryRecord, RecallMemories
from services.agent.errors import Settle
from services.agent.jobs import Versioned
from services.agent.llm import ChatMessage, ToolCallDelta
from services.runtime.bus import RequestMeta


class JobStore(Protocol):
    """Job states with compare-and-set on their revision."""

    async def get(self, job_id: UUID) -> Versioned | None: ...
    async def create(self, state: JobState) -> Versioned: ...
    async def update(self, state: JobState, revision: int) -> Versioned: ...


class LaneStore(Protocol):
    """Per-session and per-user lanes of unfinished jobs (``services.runtime.lanes.Lanes``)."""

    async def prune(
        self, key: str, is_finished: Callable[[UUID], Awaitable[bool]]
    ) -> JobLane: ...
    async def remove(self, key: str, job_id: UUID) -> JobLane: ...


class History(Protocol):
    """The history service, as the agent needs it."""

    async def list_messages(
        self, query: ListMessages, meta: RequestMeta
    ) -> list[MessageRecord]: ...
    async def append_message(self, command: AppendMessage, meta: RequestMeta) -> MessageRecord: ...


class Memories(Protocol):
    """The memory service's recall, as the agent needs it."""

    async def recall(self, query: RecallMemories, meta: RequestMeta) -> list[MemoryRecord]: ...


class Search(Protocol):
    """The history service's message search, as the agent's tools need it."""

    async def search(self, query: SearchMessages, meta: RequestMeta) -> list[MessageRecord]: ...


@dataclass(frozen=True)
class Lookups:
    """The read-only services behind a job's context and tools."""

    memories: Memories
    search: Search


class LLM(Protocol):
    """A chat model that streams its reply."""

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> AsyncGenerator[str | ToolCallDelta, None]: ...


class Events(Protocol):
    """Where deltas, outcomes and dead letters go."""

    async def delta(self, delta: ChatDelta, meta: RequestMeta) -> None: ...
    async def completed(self, event: ChatCompleted, meta: RequestMeta) -> None: ...
    async def failed(self, event: ChatFailed, meta: RequestMeta) -> None: ...
    async def dead_letter(
        self, letter: DeadLetter, meta: RequestMeta, msg_id: str | None
    ) -> None: ...


class Delivery(Protocol):
    """One delivery of a job message."""

    @property
    def subject(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def num_delivered(self) -> int: ...

    async def in_progress(self) -> None: ...


@dataclass(frozen=True)
class Verdict:
    """How to settle a delivery."""

    settle: Settle
    delay: float = 0.0


ACK = Verdict(Settle.ACK)
DROP = Verdict(Settle.DROP)
