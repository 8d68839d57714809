"""Errors of the webhooks service and their one mapping to replies.

::

    WebhookError
     ├── NotFound        no such endpoint or delivery for this user (missing or not theirs)
     ├── Invalid         a value that cannot be used: a URL refused, a cursor
     ├── TooMany         the user has as many endpoints as allowed
     └── Unavailable     the database or the bus did not answer

What a receiver answers is not an error here: it is an attempt's outcome
(:mod:`services.webhooks.sender`), retried or given up by :mod:`services.webhooks.service`.
"""

from contracts.base import BusError, ErrorCode

REASON_LIMIT = 2000


class WebhookError(Exception):
    """A request the webhooks service refuses, with a message safe to show."""

    code: ErrorCode = "internal"


class NotFound(WebhookError):
    """The endpoint or delivery does not exist or belongs to another user."""

    code: ErrorCode = "not_found"


class Invalid(WebhookError):
    """A value in the request cannot be used."""

    code: ErrorCode = "invalid"


class TooMany(WebhookError):
    """The user has as many endpoints as allowed."""

    code: ErrorCode = "conflict"


class Unavailable(WebhookError):
    """Something this service needs does not answer."""

    code: ErrorCode = "unavailable"


def to_bus_error(exc: WebhookError) -> BusError:
    """Map a domain error to the error carried by a reply."""
    return BusError(code=exc.code, message=str(exc)[:REASON_LIMIT])
