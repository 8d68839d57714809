"""Base classes shared by every bus model."""

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ErrorCode = Literal[
    "not_found", "conflict", "invalid", "unavailable", "internal", "too_many_jobs", "rate_limited"
]


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Contract(BaseModel):
    """Immutable message that refuses unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1


class BusError(Contract):
    """Failure reported in a reply instead of an exception, so the caller can map it."""

    code: ErrorCode
    message: str = Field(max_length=2000)
    retry_after: float | None = Field(
        default=None, ge=0, description="seconds until a refused request may succeed (limits)"
    )


class Reply(Contract):
    """Base of every request-reply answer: either the payload fields or ``error``."""

    error: BusError | None = None


class Ping(Contract):
    """Ask a service whether it answers on the bus."""


class Pong(Reply):
    """Answer a ping with the service name and the replica that answered."""

    service: str
    instance: str
