"""Memory edges: replies through the request edge, settlement with fake deliveries."""

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from contracts import subjects
from contracts.base import Ping, Pong
from contracts.deadletter import DeadLetter
from contracts.memory import DeleteMemory, MemoryDeleted, MemoryPage, RecallMemories
from contracts.sessions import SessionArchived
from services.memory.config import Settings
from services.memory.errors import MemoryServiceError, to_bus_error
from services.memory.service import MemoryService
from services.memory.subscribers import Edge, routes
from services.runtime.answer import Answerer
from services.runtime.deadletter import DeadLetterPublisher
from services.runtime.meta import RequestMeta
from tests.answering import Edge as RequestEdge
from tests.answering import dead_letters
from tests.unit.test_memory_service import World, archived, database_url_fixture, world_fixture

__all__ = ["database_url_fixture", "world_fixture"]


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_base_url": "http://127.0.0.1:9/v1",
        "instance": "unit-1",
        "memory_max_attempts": 3,
        "memory_retry_delay": 0.5,
    }
    return Settings(**{**values, **overrides})


@dataclass
class Harness:
    edge: RequestEdge
    dead: list[DeadLetter]

    async def ask(self, *args: Any) -> Any:
        return await self.edge.ask(*args)


def answering(service: MemoryService) -> Harness:
    letters, dead = dead_letters("memory")
    answerer = Answerer("memory", letters, MemoryServiceError, to_bus_error)
    return Harness(RequestEdge.of(answerer, routes(service)), dead)


@pytest.fixture
def harness(world: World) -> Harness:
    return answering(world.service)


async def test_recall_and_delete_answer_over_the_bus(world: World, harness: Harness) -> None:
    sid = world.session("I like tea")
    await world.service.generate(archived(sid), _meta(), _no_beat)

    page = await harness.ask(subjects.MEMORY_RECALL, RecallMemories(user_id="alice"), MemoryPage)
    assert [m.content for m in page.items] == ["The user said: I like tea"]
    assert page.error is None and page.next_cursor is None

    gone = await harness.ask(
        subjects.MEMORY_DELETE,
        DeleteMemory(user_id="bob", memory_id=page.items[0].id),
        MemoryDeleted,
    )
    assert gone.error is not None and gone.error.code == "not_found"
    done = await harness.ask(
        subjects.MEMORY_DELETE,
        DeleteMemory(user_id="alice", memory_id=page.items[0].id),
        MemoryDeleted,
    )
    assert done.deleted and done.error is None
    pong = await harness.ask(subjects.MEMORY_PING, Ping(), Pong)
    assert (pong.service, pong.instance) == ("memory", "unit")


async def test_a_malformed_request_is_answered_invalid_and_dead_lettered(
    harness: Harness,
) -> None:
    page = await harness.ask(subjects.MEMORY_RECALL, b'{"user_id": ""}', MemoryPage)
    assert page.error is not None and page.error.code == "invalid"
    assert "user_id" in page.error.message
    assert [d.subject for d in harness.dead] == [subjects.MEMORY_RECALL]

    bad_cursor = await harness.ask(
        subjects.MEMORY_RECALL, RecallMemories(user_id="alice", cursor="nope"), MemoryPage
    )
    assert bad_cursor.error is not None and bad_cursor.error.code == "invalid"


class ExplodingService(MemoryService):
    async def recall(self, req: RecallMemories, meta: Any) -> MemoryPage:
        raise RuntimeError("secret=hunter2")


async def test_a_bug_answers_internal_without_internals(world: World) -> None:
    service = ExplodingService(
        world.service.store, world.history, world.model, world.events, instance="x"
    )
    page = await answering(service).ask(
        subjects.MEMORY_RECALL, RecallMemories(user_id="a"), MemoryPage
    )
    assert page.error is not None and page.error.code == "internal"
    assert "hunter2" not in page.error.message


@dataclass
class FakeDelivery:
    """Just enough of a NatsMessage (and of its nats-py message) for the consuming edge."""

    body: bytes
    deliveries: int = 1
    settled: list[str] = field(default_factory=list)
    delay: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def raw_message(self) -> Any:
        return SimpleNamespace(
            metadata=SimpleNamespace(num_delivered=self.deliveries),
            subject="session.archived",
            data=self.body,
            headers=self.headers,
            ack=self.ack,
            nak=self.nak,
            term=self.term,
        )

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nack")
        self.delay = delay

    async def term(self) -> None:
        self.settled.append("term")

    async def in_progress(self) -> None:
        self.settled.append("in_progress")


class RecordingLetters(DeadLetterPublisher):
    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def publish(self, msg: Any, reason: str) -> None:
        self.reasons.append(reason)


async def failing(_: SessionArchived, __: Any) -> object:
    raise RuntimeError("model on fire")


async def succeeding(_: SessionArchived, __: Any) -> object:
    return None


@pytest.mark.parametrize(
    ("deliveries", "settled", "dead"),
    [(1, ["nack"], 0), (2, ["nack"], 0), (3, ["term"], 1)],
)
async def test_a_failed_event_is_retried_then_dead_lettered(
    deliveries: int, settled: list[str], dead: int
) -> None:
    letters = RecordingLetters()
    edge = Edge(settings(), letters)
    msg = FakeDelivery(archived().model_dump_json().encode(), deliveries=deliveries)
    await edge.consume(msg, SessionArchived, failing)  # type: ignore[arg-type]
    assert msg.settled == settled
    assert len(letters.reasons) == dead
    if dead:
        assert "model on fire" in letters.reasons[0]
    else:
        assert msg.delay == 0.5


async def test_events_are_acked_and_garbage_is_dead_lettered() -> None:
    letters = RecordingLetters()
    edge = Edge(settings(), letters)
    good = FakeDelivery(archived().model_dump_json().encode())
    await edge.consume(good, SessionArchived, succeeding)  # type: ignore[arg-type]
    assert good.settled == ["ack"]

    garbage = FakeDelivery(b'{"session_id": "nope"}')
    await edge.consume(garbage, SessionArchived, succeeding)  # type: ignore[arg-type]
    assert garbage.settled == ["term"]
    assert "not a SessionArchived" in letters.reasons[0]

    looping = FakeDelivery(archived().model_dump_json().encode(), deliveries=7)
    await edge.consume(looping, SessionArchived, succeeding)  # type: ignore[arg-type]
    assert looping.settled == ["term"] and "delivered 7 times" in letters.reasons[1]


async def test_settling_never_raises() -> None:
    class Broken(FakeDelivery):
        async def ack(self) -> None:
            raise ConnectionError("gone")

    edge = Edge(settings(), RecordingLetters())
    broken = Broken(archived().model_dump_json().encode())
    await edge.consume(broken, SessionArchived, succeeding)  # type: ignore[arg-type]


def _meta() -> RequestMeta:
    return RequestMeta(request_id="r", user_id="alice")


async def _no_beat() -> None:
    return None
