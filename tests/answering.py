"""Drive a service's request-reply edge without NATS: bytes in, the reply's bytes out.

The responder hands the answerer exactly this (the body, the headers, the raw
message); the real subscription is exercised by the integration tests.
"""

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from contracts.base import Contract, Reply
from contracts.deadletter import DeadLetter
from services.runtime.answer import Answerer, Route
from services.runtime.deadletter import DeadLetterPublisher
from services.runtime.meta import RequestMeta


@dataclass
class LetterBox:
    """A bus that keeps what the dead-letter publisher sends."""

    letters: list[DeadLetter] = field(default_factory=list)

    async def publish(self, subject: str, body: Contract, meta: RequestMeta, **_: Any) -> None:
        assert isinstance(body, DeadLetter)
        self.letters.append(body)


def dead_letters(service: str) -> tuple[DeadLetterPublisher, list[DeadLetter]]:
    """Return a dead-letter publisher of ``service`` and the list its letters land in."""
    box = LetterBox()
    return DeadLetterPublisher(box, service), box.letters  # type: ignore[arg-type]


@dataclass
class Edge:
    """Ask one service's routes as the responder would."""

    answerer: Answerer
    routes: dict[str, Route[Any, Any]]

    @classmethod
    def of(cls, answerer: Answerer, routes: list[Route[Any, Any]]) -> "Edge":
        return cls(answerer, {route.subject: route for route in routes})

    async def ask(self, subject: str, body: Contract | bytes, reply: type[Reply]) -> Any:
        data = body if isinstance(body, bytes) else body.model_dump_json().encode()
        headers = {"Chatbus-Request-Id": "edge-test"}
        msg = SimpleNamespace(subject=subject, data=data, headers=headers, reply="inbox")
        answer = await self.answerer.answer(self.routes[subject], data, headers, msg)
        return reply.model_validate_json(type(answer).__pydantic_serializer__.to_json(answer))
