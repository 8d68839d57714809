"""Requests served by the history service, and the records it returns."""

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.base import Contract, Reply

SessionStatus = Literal["active", "archived"]
Multitask = Literal["enqueue", "reject", "interrupt"]
Role = Literal["user", "assistant"]

PERSONA_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_CONTENT_CHARS = 200_000  # the gateway enforces the configured, smaller limit
MAX_PAGE = 200


class SessionRecord(Contract):
    """One conversation of a user with a persona."""

    id: UUID
    user_id: str
    persona: str
    title: str | None
    status: SessionStatus
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    message_count: int


class MessageRecord(Contract):
    """One stored message of a session."""

    id: UUID
    session_id: UUID
    user_id: str
    role: Role
    content: str
    created_at: datetime
    job_id: UUID | None


class CreateSession(Contract):
    """Create a session; the user's previous active session with the persona is archived."""

    user_id: str = Field(min_length=1, max_length=256)
    persona: str = Field(pattern=PERSONA_PATTERN)
    title: str | None = Field(default=None, max_length=200)


class GetSession(Contract):
    """Fetch one session of a user."""

    user_id: str = Field(min_length=1, max_length=256)
    session_id: UUID


class ListSessions(Contract):
    """List a user's sessions, newest first, one page at a time."""

    user_id: str = Field(min_length=1, max_length=256)
    status: SessionStatus | None = None
    persona: str | None = Field(default=None, pattern=PERSONA_PATTERN)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


class Admission(Contract):
    """How to admit the job a user message starts (history decides, in the append's transaction).

    History refuses the message (and stores nothing) when the user has
    ``max_active_jobs`` unfinished jobs (``too_many_jobs``) or sent
    ``max_messages_per_minute`` messages in the last minute (``rate_limited``), both
    with ``retry_after``; 0 means no limit. It names the job the new one follows (the
    session's previous job, unless that one's reply is stored), and announces the
    job on ``chat.requested`` from its outbox in the same transaction.
    """

    revision: int = Field(ge=0, description="the job record's revision, passed on to the agent")
    created_at: datetime
    multitask: Multitask = "enqueue"
    max_active_jobs: int = Field(default=0, ge=0)
    max_messages_per_minute: int = Field(default=0, ge=0)


class AppendMessage(Contract):
    """Store a message of a job; idempotent on (job_id, role).

    A user message needs an active session and an ``admission``; an assistant
    message is stored even if the session was archived while the job ran, and
    marks its job ended.
    """

    user_id: str = Field(min_length=1, max_length=256)
    session_id: UUID
    job_id: UUID
    role: Role
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    admission: Admission | None = None


class EndJob(Contract):
    """A job ended without a reply (failed or cancelled): it no longer counts as unfinished."""

    user_id: str = Field(min_length=1, max_length=256)
    job_id: UUID


class JobEnded(Reply):
    """Whether history knew the job (idempotent: ending an ended job changes nothing)."""

    known: bool = False


class ListMessages(Contract):
    """List a session's messages, newest first, one page at a time."""

    user_id: str = Field(min_length=1, max_length=256)
    session_id: UUID
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


class SessionReply(Reply):
    """A session, or the error that prevented it."""

    session: SessionRecord | None = None


class SessionPage(Reply):
    """A page of sessions; ``next_cursor`` is None on the last page."""

    items: tuple[SessionRecord, ...] = ()
    next_cursor: str | None = None


class MessageReply(Reply):
    """A stored message (the existing one when the append was a duplicate).

    ``persona`` is the persona of the message's session, so whoever queues a chat
    job for a user message needs no second request to learn it.
    """

    message: MessageRecord | None = None
    created: bool = False
    persona: str | None = None
    follows: UUID | None = None
    interrupted: tuple[UUID, ...] = Field(
        default=(),
        description="multitask=interrupt: the session's unfinished jobs, for the caller to cancel",
    )


class MessagePage(Reply):
    """A page of messages; ``next_cursor`` is None on the last page."""

    items: tuple[MessageRecord, ...] = ()
    next_cursor: str | None = None


class ArchiveSession(Contract):
    """Archive a session of a user; archiving an archived session changes nothing."""

    user_id: str = Field(min_length=1, max_length=256)
    session_id: UUID


class DeleteSession(Contract):
    """Delete a session of a user with all its messages."""

    user_id: str = Field(min_length=1, max_length=256)
    session_id: UUID


class DeleteReply(Reply):
    """Whether something was deleted (``not_found`` comes as an error).

    ``unfinished`` lists the deleted session's jobs that had not ended, for the
    caller to cancel.
    """

    deleted: bool = False
    unfinished: tuple[UUID, ...] = ()


class ListFeed(Contract):
    """List a user's messages across all sessions, newest first, one page at a time."""

    user_id: str = Field(min_length=1, max_length=256)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


class SearchMessages(Contract):
    """Find a user's own messages across sessions whose text contains ``query``."""

    user_id: str = Field(min_length=1, max_length=256)
    query: str = Field(min_length=1, max_length=500)
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
