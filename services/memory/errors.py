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
How a failed attempt is settled (:func:`verdict_for`) is a
:class:`services.runtime.settle.Verdict`: retried while attempts remain, else
dead-lettered with the reason.
"""

from contracts.base import BusError, ErrorCode
from services.runtime.settle import Verdict, give_up, retry

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


def verdict_for(
    exc: BaseException, *, deliveries: int, max_attempts: int, retry_delay: float
) -> Verdict:
    """Decide whether a failed delivery is tried again or dead-lettered."""
    retryable = not isinstance(exc, GenerationFailed) or exc.retryable
    if retryable and deliveries < max_attempts:
        return retry(retry_delay)
    return give_up(f"gave up after {deliveries} attempt(s): {reason_for(exc)}")


def reason_for(exc: BaseException) -> str:
    """Describe a failed attempt for the logs and the dead letter."""
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, MemoryServiceError):
        text = f"unexpected {type(exc).__name__}: {text}"
    return text[:REASON_LIMIT]


def to_bus_error(exc: MemoryServiceError) -> BusError:
    """Map a domain error to the error carried by a reply."""
    return BusError(code=exc.code, message=str(exc)[:REASON_LIMIT])
