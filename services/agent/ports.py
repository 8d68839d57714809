"""The interfaces the job runner takes, so tests hand it fakes."""

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from contracts.chat import ChatDelta, JobState, ToolCalled, ToolReturned
from contracts.history import AppendMessage, EndJob, ListMessages, MessageRecord, SearchMessages
from contracts.memory import MemoryRecord, RecallMemories
from services.agent.llm import ChatMessage, ToolCallDelta
from services.runtime.kv import Versioned
from services.runtime.meta import RequestMeta


class JobStore(Protocol):
    """Job states with compare-and-set on their revision."""

    async def get(self, job_id: UUID) -> Versioned[JobState] | None: ...
    async def create(self, state: JobState) -> Versioned[JobState]: ...
    async def update(self, state: JobState, revision: int) -> Versioned[JobState]: ...
    async def wait_ended(self, job_id: UUID, timeout: float) -> bool: ...


class History(Protocol):
    """The history service, as the agent needs it."""

    async def list_messages(
        self, query: ListMessages, meta: RequestMeta
    ) -> list[MessageRecord]: ...
    async def append_message(self, command: AppendMessage, meta: RequestMeta) -> MessageRecord: ...
    async def end_job(self, command: EndJob, meta: RequestMeta) -> None: ...


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
    """Where a job's events go: one subject per job, stored and replayable."""

    async def status(self, state: JobState, meta: RequestMeta) -> None: ...
    async def delta(self, delta: ChatDelta, meta: RequestMeta) -> None: ...
    async def tool_called(self, event: ToolCalled, meta: RequestMeta) -> None: ...
    async def tool_returned(self, event: ToolReturned, meta: RequestMeta) -> None: ...
    async def final(self, state: JobState, meta: RequestMeta) -> None: ...


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
