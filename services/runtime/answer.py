"""The edge of a request-reply handler: every request gets exactly one reply.

A raising FastStream handler sends no reply and its caller times out, so a
request that fails validation becomes an ``invalid`` reply (and a dead letter),
a domain error becomes its mapped ``BusError``, and anything else is logged
once with its stack trace and answered ``internal``, without internals.
"""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from faststream.nats import NatsMessage
from pydantic import ValidationError

from contracts.base import BusError, Contract, Reply
from services.runtime.deadletter import DeadLetterPublisher
from services.runtime.meta import RequestMeta

Req = TypeVar("Req", bound=Contract)
Rep = TypeVar("Rep", bound=Reply)
log = structlog.get_logger("chatbus.answer")
MESSAGE_LIMIT = 2000


def describe(exc: ValidationError) -> str:
    """Summarise validation errors as ``field: problem`` pairs, without echoing input."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)[:1500]


class RequestAnswerer:
    """Turn one raw request into one reply, whatever goes wrong."""

    def __init__(
        self,
        service: str,
        deadletters: DeadLetterPublisher,
        domain_error: type[Exception],
        to_bus_error: Callable[[Any], BusError],
    ) -> None:
        self.service = service
        self.deadletters = deadletters
        self.domain_error = domain_error
        self.to_bus_error = to_bus_error

    async def answer(
        self,
        msg: NatsMessage,
        request_type: type[Req],
        reply_type: type[Rep],
        call: Callable[[Req, RequestMeta], Awaitable[Rep]],
    ) -> Rep:
        """Validate the body, run ``call``, and map every failure to an error reply."""
        try:
            request = request_type.model_validate_json(msg.body)
        except ValidationError as exc:
            reason = f"invalid {request_type.__name__}: {describe(exc)}"
            await self.deadletters.publish(msg, reason)
            return reply_type(error=BusError(code="invalid", message=reason[:MESSAGE_LIMIT]))
        try:
            return await call(request, RequestMeta.from_headers(msg.headers))
        except self.domain_error as exc:
            return reply_type(error=self.to_bus_error(exc))
        except Exception:
            log.exception(f"{self.service} request failed", request=request_type.__name__)
            message = f"internal error in the {self.service} service"
            return reply_type(error=BusError(code="internal", message=message))
