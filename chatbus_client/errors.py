"""Errors of the chatbus client, each carrying the API's problem+json fields.

::

    ChatbusError            any failure; ``status`` is 0 when no HTTP answer came
     ├── Unauthorized       401: missing, malformed, expired or wrongly signed token
     ├── NotFound           404: no such resource for this user
     ├── Conflict           409: the resource's state forbids the operation
     ├── PayloadTooLarge    413: body or message content over the server's limit
     ├── ValidationFailed   422: ``errors`` lists each invalid field
     ├── RateLimited        429: too many messages or jobs; ``retry_after`` seconds
     ├── Unavailable        503: the bus or a service is down; ``retry_after`` seconds
     ├── ServerError        500, 504 and any other status
     └── ConnectionFailed   no answer: the server is unreachable, or a stream kept breaking

Every HTTP error is built from its response in one place, :func:`error_from`.
"""

import email.utils
import json
import time
from typing import Any

import httpx


class ChatbusError(Exception):
    """A failed call, with the fields of the problem+json body the server sent."""

    status: int = 0

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str = "",
        type: str = "about:blank",
        request_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status
        self.detail = detail
        self.title = title
        self.type = type
        self.request_id = request_id
        self.errors = errors
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"{self.status} {self.title}".strip() if self.status else self.title
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{head + ': ' if head else ''}{self.detail}{rid}"


class Unauthorized(ChatbusError):
    """The token is missing, malformed, expired or wrongly signed."""

    status = 401


class NotFound(ChatbusError):
    """No such resource for this user."""

    status = 404


class Conflict(ChatbusError):
    """The resource's state forbids the operation."""

    status = 409


class PayloadTooLarge(ChatbusError):
    """The body or the message content is over the server's limit."""

    status = 413


class ValidationFailed(ChatbusError):
    """The server refused the input; ``errors`` names each field."""

    status = 422


class RateLimited(ChatbusError):
    """Too many messages a minute or jobs at once; retry after ``retry_after`` seconds."""

    status = 429


class Unavailable(ChatbusError):
    """The bus or a service the call needs is down; retry after ``retry_after`` seconds."""

    status = 503


class ServerError(ChatbusError):
    """The server failed (500), missed a deadline (504), or answered an unexpected status."""


class ConnectionFailed(ChatbusError):
    """No HTTP answer: the server could not be reached, or a stream kept breaking."""


BY_STATUS: dict[int, type[ChatbusError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def retry_after_of(response: httpx.Response) -> float | None:
    """Read the seconds of a ``Retry-After`` header: a number, or an HTTP date."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from(response: httpx.Response) -> ChatbusError:
    """Turn a response that is not 2xx into the matching error (its body must be read)."""
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except (json.JSONDecodeError, UnicodeDecodeError):
        problem = {"detail": response.text[:500]}
    cls = BY_STATUS.get(response.status_code, ServerError)
    errors = problem.get("errors")
    return cls(
        str(problem.get("detail") or response.reason_phrase or "no detail"),
        status=response.status_code,
        title=str(problem.get("title") or response.reason_phrase),
        type=str(problem.get("type") or "about:blank"),
        request_id=problem.get("request_id") or response.headers.get("X-Request-ID"),
        errors=errors if isinstance(errors, list) else None,
        retry_after=retry_after_of(response),
    )
