"""REST shapes of the API, converted from the bus records (no user ids, no schema versions)."""

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import ErrorCode
from contracts.chat import JobState, JobStatus
from contracts.history import PERSONA_PATTERN, MessageRecord, Role, SessionRecord, SessionStatus
from contracts.memory import MemoryRecord

T = TypeVar("T")
NOT_BLANK = r"\S"  # a search, not a full match: somewhere a character that is not whitespace


class SessionCreate(BaseModel):
    """Body of ``POST /api/sessions``."""

    model_config = ConfigDict(extra="forbid")

    persona: str = Field(default="default", pattern=PERSONA_PATTERN)
    title: str | None = Field(default=None, max_length=200)


class SessionRead(BaseModel):
    """A session as clients see it."""

    id: UUID
    persona: str
    title: str | None
    status: SessionStatus
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    message_count: int

    @classmethod
    def of(cls, record: SessionRecord) -> "SessionRead":
        """Convert a history record."""
        return cls.model_validate(record.model_dump(exclude={"user_id", "schema_version"}))


class MessageCreate(BaseModel):
    """Body of ``POST /api/sessions/{id}/messages``; the byte limit is checked by the route."""

    # Python's regex engine: its `\s` is what `str.isspace` calls whitespace, the same
    # characters JSON Schema tools written in Python generate from the documented pattern.
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    content: str = Field(
        pattern=NOT_BLANK,
        description="the message: at least one character that is not whitespace; "
        "at most MAX_CONTENT_BYTES (default 32 KiB) of UTF-8, else 413",
    )


class MessageRead(BaseModel):
    """A message as clients see it."""

    id: UUID
    session_id: UUID
    role: Role
    content: str
    created_at: datetime
    job_id: UUID | None

    @classmethod
    def of(cls, record: MessageRecord) -> "MessageRead":
        """Convert a history record."""
        return cls.model_validate(record.model_dump(exclude={"user_id", "schema_version"}))


class MemoryRead(BaseModel):
    """A long-term memory as clients see it."""

    id: UUID
    session_id: UUID
    persona: str
    content: str
    created_at: datetime

    @classmethod
    def of(cls, record: MemoryRecord) -> "MemoryRead":
        """Convert a memory record."""
        return cls.model_validate(record.model_dump(exclude={"user_id", "schema_version"}))


class JobErrorRead(BaseModel):
    """Why a job failed."""

    code: ErrorCode | Literal["llm_error", "max_attempts", "bad_request"]
    message: str


class JobRead(BaseModel):
    """A chat job as clients see it."""

    id: UUID
    session_id: UUID
    status: JobStatus
    reply: MessageRead | None
    error: JobErrorRead | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tools: list[str] = Field(
        default_factory=list, description="names of the tools the model called (extension)"
    )

    @classmethod
    def of(cls, state: JobState) -> "JobRead":
        """Convert the state stored in the job bucket."""
        return cls(
            id=state.id,
            session_id=state.session_id,
            status=state.status,
            reply=MessageRead.of(state.reply) if state.reply else None,
            error=JobErrorRead(code=state.error.code, message=state.error.message)
            if state.error
            else None,
            attempts=state.attempts,
            created_at=state.created_at,
            started_at=state.started_at,
            finished_at=state.finished_at,
            tools=list(state.tools),
        )


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None


class Problem(BaseModel):
    """An error body (RFC 9457 problem details)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    request_id: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="present on 422: one entry per invalid field"
    )


_WHY = {
    400: "the body could not be read (it is not UTF-8 text)",
    401: "missing, malformed, expired or wrongly signed token",
    404: "no such resource for this user",
    409: "the resource's state forbids the operation",
    413: "body or message content over the configured limit",
    429: "the user has too many jobs queued or running; Retry-After is set",
    422: "validation failed (a malformed id in the path answers 422 too)",
    500: "a bug, logged with its stack trace and request id",
    503: "the bus or a needed service is unavailable; Retry-After is set",
    504: "a service did not answer in time",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document the problem+json answers of a route."""
    return {
        status: {
            "model": Problem,
            "description": _WHY[status],
            "content": {"application/problem+json": {}},
        }
        for status in statuses
    }
