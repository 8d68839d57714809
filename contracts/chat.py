"""Chat jobs: the command, the job record, the cancel request, and the job's events.

A job's life, and who writes what:

- the gateway creates the job record (``chat_jobs`` bucket, status ``queued``) and
  asks history to admit the user's message; history stores it and announces
  :class:`RequestChat` from its outbox (so a stored message is always answered);
- from the first delivery on, only the agent moves the record (compare-and-set
  on the revision it last wrote) and publishes the job's events on
  ``chat.job.<job_id>.<kind>`` (stored in the ``JOB_EVENTS`` stream, replayable);
- the gateway never writes the record again; a cancel is its own key in the
  ``chat_cancels`` bucket (:class:`CancelRequest`), which every agent watches.
"""

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.base import Contract, ErrorCode
from contracts.history import MAX_CONTENT_CHARS, MessageRecord

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
FinalStatus = Literal["completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
TOOL_RESULT_EVENT_CHARS = 2000  # a tool_result event carries at most this much of the result


class RequestChat(Contract):
    """Answer a user's message in a session (published on ``chat.requested`` by history)."""

    job_id: UUID
    user_id: str = Field(min_length=1, max_length=256)
    session_id: UUID
    persona: str
    message_id: UUID
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    created_at: datetime
    follows: UUID | None = Field(
        default=None,
        description="the job of the same session admitted just before this one and not yet "
        "answered when this one was: this job starts only once that one has ended",
    )
    revision: int = Field(
        default=0, ge=0, description="the job record's revision as the gateway created it"
    )


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
    tools: tuple[str, ...] = Field(default=(), description="names of the tools the model called")

    @property
    def finished(self) -> bool:
        """Tell whether the job reached a final status."""
        return self.status in TERMINAL_STATUSES


class CancelRequest(Contract):
    """A user asked to stop a job (``chat_cancels`` bucket, key: the job id; gateway writes)."""

    job_id: UUID
    user_id: str
    requested_at: datetime


class ChatDelta(Contract):
    """A piece of the reply as the model writes it (``chat.job.<id>.delta``)."""

    job_id: UUID
    attempt: int = Field(ge=1)
    text: str


class ToolCalled(Contract):
    """The model called a tool; ``arguments`` is the JSON text as the model sent it."""

    job_id: UUID
    attempt: int = Field(ge=1)
    call_id: str
    name: str
    arguments: str


class ToolReturned(Contract):
    """A tool answered; ``result`` is cut to ``TOOL_RESULT_EVENT_CHARS`` (``truncated`` says so)."""

    job_id: UUID
    attempt: int = Field(ge=1)
    call_id: str
    name: str
    result: str = Field(max_length=TOOL_RESULT_EVENT_CHARS)
    truncated: bool = False
