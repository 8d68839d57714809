"""Session lifecycle events."""

from datetime import datetime
from uuid import UUID

from contracts.base import Contract


class SessionArchived(Contract):
    """A session was archived (published on ``session.archived``)."""

    session_id: UUID
    user_id: str
    persona: str
    archived_at: datetime


class SessionDeleted(Contract):
    """A session and its messages were deleted (published on ``session.deleted``)."""

    session_id: UUID
    user_id: str
    deleted_at: datetime
