"""Domain errors of the history service and their one mapping to bus error codes.

Hierarchy::

    HistoryError
     ├── NotFound            no such session for this user (missing or not theirs)
     ├── Conflict            the session's state forbids the operation
     │    └── RetryableConflict   a concurrent writer won a race; the caller may retry
     ├── InvalidInput        a well-formed request with an unusable value (a cursor)
     ├── Unavailable         the database does not answer
     ├── TooManyJobs         the user has as many unfinished jobs as allowed (``retry_after``)
     └── RateLimited         the user sent as many messages as allowed this minute (``retry_after``)

Store-level races (``ActiveSessionExists``, ``DuplicateMessage``) are raised by
the store and handled by the service; they never reach a reply.
"""

from contracts.base import BusError, ErrorCode


class HistoryError(Exception):
    """A request the history service refuses, with a message safe to show."""

    code: ErrorCode = "internal"
    retry_after: float | None = None


class NotFound(HistoryError):
    """The session does not exist or belongs to another user."""

    code: ErrorCode = "not_found"


class Conflict(HistoryError):
    """The operation conflicts with the resource's state."""

    code: ErrorCode = "conflict"


class InvalidInput(HistoryError):
    """A value in the request cannot be used."""

    code: ErrorCode = "invalid"


class Unavailable(HistoryError):
    """Something this service needs (its database) does not answer."""

    code: ErrorCode = "unavailable"


class RetryableConflict(Conflict):
    """Concurrent writers kept winning; the caller may try again."""


class Limited(HistoryError):
    """A limit refused the request; it may succeed after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class TooManyJobs(Limited):
    """The user already has as many unfinished jobs as the admission allows."""

    code: ErrorCode = "too_many_jobs"


class RateLimited(Limited):
    """The user already sent as many messages within the window as the admission allows."""

    code: ErrorCode = "rate_limited"


class ActiveSessionExists(Exception):
    """Another active session with the same user and persona was inserted concurrently."""


class DuplicateMessage(Exception):
    """A message with the same (job_id, role) already exists."""


def to_bus_error(exc: HistoryError) -> BusError:
    """Map a domain error to the error carried by a reply."""
    return BusError(code=exc.code, message=str(exc)[:2000], retry_after=exc.retry_after)
