"""The gateway's errors and their one mapping to problem+json responses (RFC 9457).

Errors the gateway raises itself::

    GatewayError            a failure with a known HTTP status
     ├── Unauthorized       401: missing, malformed, expired or wrongly signed token
     ├── NotFound           404: no such resource for this user
     ├── Conflict           409: the resource's state forbids the operation
     ├── ContentTooLarge    413: body or content over the configured limit
     ├── TooManyRequests    429: too many jobs unfinished or messages this minute
     ├── Invalid            422: a service refused the input
     ├── Unavailable        503: a needed service cannot take the request now
     └── Internal           500: a service reported a bug

Errors of the bus (:mod:`services.runtime.bus`) map to 503, 504 and 500.
Anything else is a bug: :func:`unhandled_error` logs it once with its stack
trace and answers a bare 500 (called by the request middleware).
"""

import json
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from contracts.base import BusError as ReplyError
from contracts.base import ErrorCode
from services.runtime.meta import BusError, BusProtocolError, BusTimeout

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 2


class GatewayError(Exception):
    """A failure with a known HTTP status."""

    status = 500
    code: ErrorCode = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(GatewayError):
    """The request carries no valid token."""

    status = 401
    code: ErrorCode = "invalid"


class NotFound(GatewayError):
    """No such resource for this user."""

    status = 404
    code: ErrorCode = "not_found"


class Conflict(GatewayError):
    """The resource's state forbids the operation."""

    status = 409
    code: ErrorCode = "conflict"


class ContentTooLarge(GatewayError):
    """The body or the message content is over the configured limit."""

    status = 413
    code: ErrorCode = "invalid"


class TooManyRequests(GatewayError):
    """The user has as many unfinished jobs, or sent as many messages this minute, as allowed."""

    status = 429
    code: ErrorCode = "too_many_jobs"

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Invalid(GatewayError):
    """A service refused the input; ``loc`` names the field when the gateway knows it."""

    status = 422
    code: ErrorCode = "invalid"

    def __init__(self, detail: str, loc: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.loc = loc


class Unavailable(GatewayError):
    """A needed service cannot take the request now."""

    status = 503
    code: ErrorCode = "unavailable"


class Internal(GatewayError):
    """A service reported a bug of its own."""

    status = 500


_BY_CODE: dict[ErrorCode, type[GatewayError]] = {
    "not_found": NotFound,
    "conflict": Conflict,
    "invalid": Invalid,
    "unavailable": Unavailable,
    "internal": Internal,
}


def from_reply(error: ReplyError) -> GatewayError:
    """Turn the error carried by a bus reply into the matching gateway error."""
    if error.code == "rate_limited":  # history knows when the oldest message leaves the minute
        return TooManyRequests(error.message, error.retry_after)
    if error.code == "too_many_jobs":  # when a job ends is unknown: RETRY_AFTER_SECONDS
        return TooManyRequests(error.message)
    return _BY_CODE[error.code](error.message)


def problem(
    status: int,
    detail: str,
    request_id: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Render a problem+json response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = errors
    return Response(json.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_JSON)


def request_id_of(request: Request) -> str:
    """Return the id the request middleware gave this request."""
    return str(request.scope.get("chatbus.request_id", ""))


def retry_after(request: Request) -> dict[str, str]:
    """Return the Retry-After header the app's settings ask for."""
    seconds = getattr(getattr(request.app.state, "settings", None), "retry_after_seconds", None)
    return {"Retry-After": str(RETRY_AFTER_SECONDS if seconds is None else seconds)}


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    log = structlog.get_logger("chatbus.gateway.errors")
    headers: dict[str, str] = {}
    errors: list[dict[str, Any]] | None = None
    if isinstance(exc, Invalid):
        errors = [{"loc": list(exc.loc), "msg": exc.detail, "type": "invalid"}]
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, TooManyRequests):
        if exc.retry_after is None:
            headers.update(retry_after(request))
        else:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        log.info("over a per-user limit", detail=exc.detail)
    elif isinstance(exc, Unavailable):
        headers.update(retry_after(request))
        log.warning("service unavailable", detail=exc.detail)
    elif isinstance(exc, Internal):
        log.error("a service reported an internal error", detail=exc.detail, exc_info=exc)
    return problem(exc.status, exc.detail, request_id_of(request), errors=errors, headers=headers)


async def _bus_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BusError)
    log = structlog.get_logger("chatbus.gateway.errors")
    rid = request_id_of(request)
    if isinstance(exc, BusTimeout):
        log.warning("bus request timed out", error=str(exc))
        return problem(504, "a service did not answer in time", rid)
    if isinstance(exc, BusProtocolError):
        log.error("bad answer on the bus", exc_info=exc)
        return problem(500, "internal error", rid)
    log.warning("bus unavailable", error=str(exc))
    return problem(503, "a needed service is unavailable", rid, headers=retry_after(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return problem(exc.status_code, detail, request_id_of(request), headers=headers or None)


def allowed_methods(request: Request) -> str:
    """List the methods the OpenAPI document gives the request's path, for ``Allow``.

    Starlette's 405 names only the methods of the first route whose path matches,
    while RFC 9110 wants every method the resource supports.
    """
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(path):
            methods.update(method.upper() for method in operations)
    return ", ".join(sorted(methods))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Input values are left out: they may be large or secret.
    errors = [
        {"loc": [str(part) for part in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors()
    ]
    return problem(422, "request validation failed", request_id_of(request), errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to problem+json responses."""
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(BusError, _bus_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


def unhandled_error(exc: BaseException, request_id: str, method: str, path: str) -> Response:
    """Log a bug once with its stack trace and answer 500 without internals."""
    structlog.get_logger("chatbus.gateway.errors").error(
        "unhandled error",
        request_id=request_id,
        method=method,
        path=path,
        exc_info=exc,
    )
    return problem(500, "internal error", request_id)
