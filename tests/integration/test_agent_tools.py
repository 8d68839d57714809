"""The agent's tools end to end on the bus: real NATS, the simulated model, memory stand-ins."""

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

import pytest
from faststream.nats import NatsBroker

from contracts import subjects
from contracts.base import utcnow
from contracts.history import MessagePage, SearchMessages
from contracts.memory import MemoryPage, MemoryRecord, RecallMemories
from tests.integration.test_agent_stack import Stack, StartAgent, start_agent

pytestmark = pytest.mark.integration
__all__ = ["start_agent"]  # the fixture, imported for pytest

PEANUTS = "The user said: I am allergic to peanuts"


@dataclass
class Lookups:
    """Answers memory recall and history search from lists, recording every query."""

    memories: list[MemoryRecord] = field(default_factory=list)
    recalls: list[RecallMemories] = field(default_factory=list)
    searches: list[SearchMessages] = field(default_factory=list)

    def remember(self, user: str, content: str, persona: str = "friend") -> None:
        self.memories.append(MemoryRecord(
            id=uuid.uuid4(), user_id=user, session_id=uuid.uuid4(), persona=persona,
            content=content, created_at=utcnow(),
        ))

    def router(self, broker: NatsBroker, stack: Stack) -> None:
        @broker.subscriber(subjects.MEMORY_RECALL, queue=subjects.MEMORY_QUEUE)
        async def recall(query: RecallMemories) -> MemoryPage:
            self.recalls.append(query)
            found = [
                m for m in self.memories
                if m.user_id == query.user_id
                and (query.persona is None or m.persona == query.persona)
                and (not query.query or query.query.lower() in m.content.lower())
            ]
            return MemoryPage(items=tuple(found[: query.limit]))

        @broker.subscriber(subjects.HISTORY_SEARCH, queue=subjects.HISTORY_QUEUE)
        async def search(query: SearchMessages) -> MessagePage:
            self.searches.append(query)
            found = [
                m for ms in stack.history.messages.values() for m in reversed(ms)
                if m.user_id == query.user_id and query.query.lower() in m.content.lower()
            ]
            return MessagePage(items=tuple(found[: query.limit]))


@pytest.fixture
async def tooled(start_agent: StartAgent) -> AsyncIterator[tuple[Stack, Lookups]]:
    stack = await start_agent()
    lookups = Lookups()
    broker = NatsBroker(stack.settings.nats_url)
    lookups.router(broker, stack)
    await broker.start()
    # The server must know the subscriptions before anyone sends a request.
    await broker.connection.flush()
    try:
        yield stack, lookups
    finally:
        await broker.stop()


async def submit(stack: Stack, user: str, content: str) -> UUID:
    """Queue a job of ``user`` as the gateway and history do."""
    return (await stack.submit(content, user=user)).job_id


async def test_recall_runs_the_tool_and_the_reply_carries_the_memory(
    tooled: tuple[Stack, Lookups],
) -> None:
    stack, lookups = tooled
    lookups.remember("u1", PEANUTS)
    question = "what do you remember about peanuts"

    state = await stack.final_state(await submit(stack, "u1", question))

    assert state.status == "completed", state.error
    assert state.tools == ("recall_memories",)
    assert state.reply is not None
    assert state.reply.content == (
        f"Echo: {question} (turn 1) [recall_memories: - {PEANUTS}]"
    )
    first, second = await stack.llm_prompts(question)
    assert PEANUTS in first[0]["content"]  # recalled into the system prompt too
    assert second[-1] == {
        "role": "tool", "tool_call_id": second[-2]["tool_calls"][0]["id"],
        "content": f"- {PEANUTS}",
    }
    assert [(q.user_id, q.persona, q.query) for q in lookups.recalls] == [
        ("u1", "friend", None), ("u1", "friend", "peanuts"),
    ]
    events = await stack.events(state.id)
    tool_events = [(kind, json.loads(body)) for kind, body in events if kind.startswith("tool")]
    assert [(kind, body["name"]) for kind, body in tool_events] == [
        ("tool_call", "recall_memories"), ("tool_result", "recall_memories"),
    ]
    assert json.loads(tool_events[0][1]["arguments"]) == {"query": "peanuts"}
    assert tool_events[1][1]["result"] == f"- {PEANUTS}"
    assert tool_events[0][1]["call_id"] == tool_events[1][1]["call_id"]
    kinds = [kind for kind, _ in events]
    assert kinds.index("tool_call") < kinds.index("tool_result") < len(kinds) - 1


async def test_search_history_tool_searches_the_users_messages(
    tooled: tuple[Stack, Lookups],
) -> None:
    stack, lookups = tooled
    await stack.final_state(await submit(stack, "u1", "I planted basil today"))
    state = await stack.final_state(await submit(stack, "u1", "search history for basil"))
    assert state.status == "completed" and state.tools == ("search_history",)
    assert state.reply is not None and "user: I planted basil today" in state.reply.content
    assert [(q.user_id, q.query) for q in lookups.searches] == [("u1", "basil")]


async def test_one_users_recall_never_returns_anothers_memories(
    tooled: tuple[Stack, Lookups],
) -> None:
    stack, lookups = tooled
    lookups.remember("alice", "alice's secret: she loves tea")
    lookups.remember("bob", "bob drinks coffee")
    question = "recall what you know about tea"

    state = await stack.final_state(await submit(stack, "bob", question))

    assert state.status == "completed" and state.tools == ("recall_memories",)
    assert state.reply is not None
    assert state.reply.content.endswith("[recall_memories: no memories found]")
    for prompt in await stack.llm_prompts(question):
        assert "alice" not in str(prompt)
    assert {q.user_id for q in lookups.recalls} == {"bob"}


async def test_a_model_looping_on_tools_fails_the_job_at_the_round_limit(
    tooled: tuple[Stack, Lookups],
) -> None:
    stack, _ = tooled
    state = await stack.final_state(await submit(stack, "u1", "go [sim:loop-tools]"))
    assert state.status == "failed" and state.error is not None
    assert state.error.code == "llm_error"
    assert "tool round limit (4 rounds)" in state.error.message
    assert state.attempts == 1
    assert await stack.llm_requests("go [sim:loop-tools]") == 5
