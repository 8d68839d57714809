"""The edge of a request-reply handler: every request gets exactly one reply.

A request that fails validation becomes an ``invalid`` reply (and a dead
letter), a domain error becomes its mapped ``BusError``, and anything else is
logged once with its stack trace and answered ``internal``, without internals.
Nothing here knows NATS: :mod:`services.runtime.responder` feeds it raw bodies.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from pydantic import ValidationError

from contracts.base import BusError, Contract, Reply
from services.runtime.meta import RequestMeta
from services.runtime.settle import DeadLetters

__all__ = ["Answerer", "DeadLetters", "Route", "describe"]
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


@dataclass(frozen=True)
class Route(Generic[Req, Rep]):
    """One subject served: its request and reply models and the service method answering."""

    subject: str
    request: type[Req]
    reply: type[Rep]
    call: Callable[[Req, RequestMeta], Awaitable[Rep]]


class Answerer:
    """Turn one raw request into one reply, whatever goes wrong."""

    def __init__(
        self,
        service: str,
        deadletters: DeadLetters,
        domain_error: type[Exception],
        to_bus_error: Callable[[Any], BusError],
    ) -> None:
        self.service = service
        self.deadletters = deadletters
        self.domain_error = domain_error
        self.to_bus_error = to_bus_error

    async def answer(
        self, route: Route[Any, Any], data: bytes, headers: Mapping[str, str] | None, msg: Any
    ) -> Reply:
        """Validate ``data``, run the route's call, and map every failure to an error reply.

        ``msg`` is the raw message, dead-lettered as it came when it is malformed.
        """
        try:
            request = route.request.model_validate_json(data)
        except ValidationError as exc:
            reason = f"invalid {route.request.__name__}: {describe(exc)}"
            await self.deadletters.publish(msg, reason)
            error = BusError(code="invalid", message=reason[:MESSAGE_LIMIT])
            return route.reply(error=error)  # type: ignore[no-any-return]
        try:
            return await route.call(request, RequestMeta.from_headers(headers))  # type: ignore[no-any-return]
        except self.domain_error as exc:
            return route.reply(error=self.to_bus_error(exc))  # type: ignore[no-any-return]
        except Exception:
            log.exception(f"{self.service} request failed", request=route.request.__name__)
            message = f"internal error in the {self.service} service"
            return route.reply(error=BusError(code="internal", message=message))  # type: ignore[no-any-return]
