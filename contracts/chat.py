"""Chat jobs: the command, its events, and the job state kept in the KV bucket."""

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.base import Contract, ErrorCode
from contracts.history import MAX_CONTENT_CHARS, MessageRecord

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class RequestChat(Contract):
    """Answer a user's message in a session (published on ``chat.requested``)."""

    job_id: UUID
    user_id: str = Field(min_length=1, max_length=256)
    session_id: UUID
    persona: str
    message_id: UUID
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    created_at: datetime


class JobError(Contract):
    """Why a job failed."""

    code: ErrorCode | Literal["llm_error", "max_attempts", "bad_request"]
    message: str = Field(max_length=2000)


class JobState(Contract):
    """A job as stored in the ``chat_jobs`` KV bucket under its id."""

    id: UUID
    user_id: str
    session_id: UUID
    status: JobStatus
    reply: MessageRecord | None = None
    error: JobError | None = None
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested: bool = False
    tools: tuple[str, ...] = Field(default=(), description="names of the tools the model called")
    lease_expires_at: datetime | None = Field(
        default=None,
        description="while running: when the worker's ack deadline runs out unless it heartbeats",
    )

    @property
    def finished(self) -> bool:
        """Tell whether the job reached a final status."""
        return self.status in TERMINAL_STATUSES


class JobLane(Contract):
    """Unfinished jobs of one session or one user, oldest first (``chat_lanes`` bucket)."""

    jobs: tuple[UUID, ...] = ()


class CancelJob(Contract):
    """Stop a running job at once (core NATS broadcast on ``chat.cancel``)."""

    job_id: UUID
    user_id: str


class ChatDelta(Contract):
    """A piece of the reply as the model writes it (core NATS, best effort)."""

    job_id: UUID
    seq: int = Field(ge=0)
    text: str


class ChatCompleted(Contract):
    """A job's reply is stored (published on ``chat.completed``)."""

    job_id: UUID
    user_id: str
    session_id: UUID
    reply: MessageRecord


class ChatFailed(Contract):
    """A job ended without a reply (published on ``chat.failed``)."""

    job_id: UUID
    user_id: str
    session_id: UUID
    error: JobError
    attempts: int
