"""Errors of the memory service and their one mapping to replies and to settlement.

Hierarchy::

    MemoryServiceError
     ├── NotFound              no such memory for this user (missing or not theirs)
     ├── InvalidInput          a well-formed request with an unusable value (a cursor)
     └── GenerationFailed      one attempt at an archived session's memories failed
          ├── HistoryUnavailable   history did not hand over the session's messages
          ├── ModelFailed          the model call failed (``retryable`` says if worth retrying)
          ├── InvalidModelOutput   the model's answer is not a MemoryExtraction
          └── EventNotStored       MemoriesStored was not stored in its stream

A session stored concurrently by another delivery (``AlreadyProcessed``) is
raised by the store and handled by the service; it never reaches settlement.
"""

from dataclasses import dataclass
from enum import Enum

from contracts.base import BusError, ErrorCode

REASON_LIMIT = 2000


class MemoryServiceError(Exception):
    """A request or an attempt the memory service refuses, with a message safe to show."""

    code: ErrorCode = "internal"


class NotFound(MemoryServiceError):
    """The memory does not exist or belongs to another user."""

    code: ErrorCode = "not_found"


class InvalidInput(MemoryServiceError):
    """A value in the request cannot be used."""

    code: ErrorCode = "invalid"


class Unavailable(MemoryServiceError):
    """Something this service needs (its database) does not answer."""

    code: ErrorCode = "unavailable"


class GenerationFailed(MemoryServiceError):
    """An attempt at generating a session's memories failed."""

    code: ErrorCode = "unavailable"
    retryable = True


class HistoryUnavailable(GenerationFailed):
    """History did not answer with the session's messages."""


class ModelFailed(GenerationFailed):
    """The model call failed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class InvalidModelOutput(GenerationFailed):
    """The model answered something that is not a memory extraction."""


class EventNotStored(GenerationFailed):
    """The MemoriesStored event was not acknowledged by its stream."""


class AlreadyProcessed(Exception):
    """Another delivery recorded the session first."""


class Settle(Enum):
    """What to tell JetStream about a delivered event."""

    ACK = "ack"  # done (or nothing to do): never deliver again
    RETRY = "retry"  # nak with a delay: deliver again later
    GIVE_UP = "give_up"  # dead-letter with the reason, then term


@dataclass(frozen=True)
class Verdict:
    """How to settle one delivery, and why."""

    settle: Settle
    delay: float = 0.0
    reason: str = ""


def verdict_for(
    exc: BaseException, *, deliveries: int, max_attempts: int, retry_delay: float
) -> Verdict:
    """Decide whether a failed delivery is tried again or dead-lettered."""
    reason = _reason(exc)
    retryable = not isinstance(exc, GenerationFailed) or exc.retryable
    if retryable and deliveries < max_attempts:
        return Verdict(Settle.RETRY, delay=retry_delay, reason=reason)
    return Verdict(Settle.GIVE_UP, reason=f"gave up after {deliveries} attempt(s): {reason}")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, MemoryServiceError):
        text = f"unexpected {type(exc).__name__}: {text}"
    return text[:REASON_LIMIT]


def to_bus_error(exc: MemoryServiceError) -> BusError:
    """Map a domain error to the error carried by a reply."""
    return BusError(code=exc.code, message=str(exc)[:REASON_LIMIT])
