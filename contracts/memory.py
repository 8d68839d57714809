"""Requests served by the memory service, and the records and events it produces."""

from datetime import datetime
from uuid import UUID

from pydantic import Field

from contracts.base import Contract, Reply
from contracts.history import MAX_PAGE, PERSONA_PATTERN

MAX_MEMORY_CHARS = 500


class MemoryRecord(Contract):
    """One long-term memory: a short, self-contained fact about the user."""

    id: UUID
    user_id: str
    session_id: UUID
    persona: str
    content: str = Field(max_length=MAX_MEMORY_CHARS)
    created_at: datetime


class RecallMemories(Contract):
    """List a user's memories, newest first, optionally by persona and text."""

    user_id: str = Field(min_length=1, max_length=256)
    persona: str | None = Field(default=None, pattern=PERSONA_PATTERN)
    query: str | None = Field(default=None, max_length=500)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


class MemoryPage(Reply):
    """A page of memories; ``next_cursor`` is None on the last page."""

    items: tuple[MemoryRecord, ...] = ()
    next_cursor: str | None = None


class DeleteMemory(Contract):
    """Delete one memory of a user."""

    user_id: str = Field(min_length=1, max_length=256)
    memory_id: UUID


class MemoryDeleted(Reply):
    """Whether the memory was deleted (``not_found`` comes as an error)."""

    deleted: bool = False


class MemoriesStored(Contract):
    """Memories of an archived session were stored (published on ``memory.stored``)."""

    session_id: UUID
    user_id: str
    persona: str
    memory_ids: tuple[UUID, ...]
    stored_at: datetime
