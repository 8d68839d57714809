"""The outermost request layer: request id, log context, body limit, metrics, access log, 500.

Every request ends in one ``request handled`` log line carrying its request id
(debug level for the probes and the metrics scrape, info for the rest).
"""

import re
import time
import uuid

import structlog
from prometheus_client import Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import problem, unhandled_error

REQUEST_ID_HEADER = "X-Request-ID"
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
log = structlog.get_logger("chatbus.gateway.access")
# Client ids are echoed into headers and logs, so only tame ones are kept.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(headers: Headers) -> str:
    """Return the client's request id when it is safe to echo, else a fresh one."""
    sent = headers.get(REQUEST_ID_HEADER)
    if sent is not None and _SAFE_ID.match(sent):
        return sent
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Give every HTTP request an id, a body limit, a latency sample, and a 500 of last resort."""

    def __init__(self, app: ASGIApp, latency: Histogram, max_body_bytes: int) -> None:
        self.app = app
        self.latency = latency
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = request_id_from(headers)
        scope["chatbus.request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI passes an HTTPException raised while reading the body to its handler.
                    raise HTTPException(413, "request body too large")
            return message

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                if _declared_length(headers) > self.max_body_bytes:
                    await problem(413, "request body too large", request_id)(
                        scope, receive, send_with_id
                    )
                else:
                    await self.app(scope, receive_with_limit, send_with_id)
            except Exception as exc:
                response = unhandled_error(exc, request_id, scope["method"], scope["path"])
                # Past the first byte a response can only be cut short, not replaced.
                if not response_started:
                    await response(scope, receive, send_with_id)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "<unmatched>"
                seconds = time.perf_counter() - started
                self.latency.labels(scope["method"], template, str(status)).observe(seconds)
                access = log.debug if template in QUIET_ROUTES else log.info
                access(
                    "request handled",
                    method=scope["method"],
                    route=template,
                    status=status,
                    ms=round(seconds * 1000, 1),
                )
                # The auth dependency binds the user id in this same context.
                structlog.contextvars.unbind_contextvars("user_id")


def _declared_length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0
