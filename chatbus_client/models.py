"""What the API returns, as typed, immutable models (unknown fields are ignored)."""

from datetime import datetime
from typing import Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")
SessionStatus = Literal["active", "archived"]
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class Model(BaseModel):
    """Base of every model: frozen, tolerant of fields a newer server adds."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Session(Model):
    """One conversation of the user with a persona."""

    id: UUID
    persona: str
    title: str | None
    status: SessionStatus
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    message_count: int


class Message(Model):
    """One message of a session."""

    id: UUID
    session_id: UUID
    role: Literal["user", "assistant"]
    content: str
    created_at: datetime
    job_id: UUID | None


class JobError(Model):
    """Why a job failed."""

    code: str
    message: str


class Job(Model):
    """A chat job: the reply to one message, queued, running or ended."""

    id: UUID
    session_id: UUID
    status: JobStatus
    reply: Message | None
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tools: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        """Tell whether the job has ended (completed, failed or cancelled)."""
        return self.status in FINISHED


class Memory(Model):
    """A long-term fact the memory service drew from an archived session."""

    id: UUID
    session_id: UUID
    persona: str
    content: str
    created_at: datetime


class Page(Model, Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None = None
