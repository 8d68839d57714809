"""Memory and chat against servers that are not OpenAI: the simulated model in each imitation.

The simulated model refuses ``json_schema``, ``json_object``, ``stream_options`` or
``tools`` as llama.cpp's server, older vLLM, Azure OpenAI or Ollama do; the memory
service must step down to what the server takes and the agent must drop what it
refuses, each once per process, and still store memories and answer jobs.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker

from contracts import subjects
from contracts.deadletter import DeadLetter
from contracts.history import ListMessages, MessagePage
from services.launcher.natsserver import free_port
from services.memory.app import create_app
from services.memory.config import Settings
from services.runtime.bus import BusClient
from services.simllm.config import Settings as SimSettings
from services.simllm.server import running
from tests.integration.test_agent_stack import StartAgent, start_agent
from tests.integration.test_agent_tools import Lookups
from tests.integration.test_memory_flow import (
    TIMEOUT,
    FakeHistory,
    FakeLLM,
    Stack,
    eventually,
    stored_events,
)
from tests.streams import stream_messages_at

pytestmark = pytest.mark.integration
__all__ = ["start_agent"]  # the fixture, imported for pytest
StartMemory = Callable[[frozenset[str]], Awaitable[tuple[Stack, str]]]


@pytest.fixture
async def start_memory(clean_nats: str, tmp_path: Any) -> AsyncIterator[StartMemory]:
    """Start the memory service against the simulated model refusing the given options."""
    async with AsyncExitStack() as stack:

        async def start(refuse: frozenset[str]) -> tuple[Stack, str]:
            sim = SimSettings(
                simllm_port=free_port(), llm_sim_latency=0, llm_sim_tokens_per_second=0,
                llm_sim_refuse=refuse,
            )
            base_url = await stack.enter_async_context(running(sim))
            history = FakeHistory()
            responder = NatsBroker(clean_nats)

            @responder.subscriber(subjects.HISTORY_MESSAGE_LIST, queue=subjects.HISTORY_QUEUE)
            async def list_messages(req: ListMessages) -> MessagePage:
                return history.page(req)

            await responder.start()
            stack.push_async_callback(responder.stop)
            settings = Settings(
                nats_url=clean_nats, database_url=f"sqlite+aiosqlite:///{tmp_path}/m.db",
                instance="it-memory", openai_base_url=base_url, llm_max_retries=0,
                llm_timeout=10, memory_max_attempts=2, memory_retry_delay=0.1,
                memory_fetch_timeout=0.5,
            )
            await stack.enter_async_context(create_app(settings))
            client = NatsBroker(clean_nats)
            await client.connect()
            stack.push_async_callback(client.stop)
            return Stack(BusClient(client, TIMEOUT), clean_nats, history, FakeLLM()), base_url

        yield start


async def sim_requests(base_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{base_url.removesuffix('/v1')}/sim/requests")
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def way(body: dict[str, Any]) -> str:
    """Name how a memory request asked: its response_format type, or ``prompt``."""
    fmt = body.get("response_format")
    return str(fmt["type"]) if fmt else "prompt"


@pytest.mark.parametrize(
    ("refuse", "first", "later"),
    [
        (frozenset(), ["json_schema"], ["json_schema"]),
        (frozenset({"json_schema"}), ["json_schema", "json_object"], ["json_object"]),
        (
            frozenset({"json_schema", "json_object"}),
            ["json_schema", "json_object", "prompt"],
            ["prompt"],
        ),
    ],
    ids=["openai", "no-json-schema", "no-response-format"],
)
async def test_memories_are_stored_whatever_format_the_server_takes(
    start_memory: StartMemory, refuse: frozenset[str], first: list[str], later: list[str]
) -> None:
    stack, base_url = await start_memory(refuse)
    sid = stack.history.add("alice", "I like green tea", "Noted", "hello")
    await stack.archive(sid)
    await stored_events(stack, 1)
    assert await stack.contents() == ["The user said: I like green tea"]
    assert [way(body) for body in await sim_requests(base_url)] == first

    # The way that worked is remembered: the next session is asked that way only.
    again = stack.history.add("alice", "My cat is Tom")
    await stack.archive(again)
    await stored_events(stack, 2)
    assert (await stack.contents())[0] == "The user said: My cat is Tom"
    assert [way(body) for body in (await sim_requests(base_url))[len(first):]] == later


async def test_a_bad_answer_is_retried_then_dead_lettered_with_the_reason(
    start_memory: StartMemory,
) -> None:
    stack, base_url = await start_memory(frozenset({"json_schema", "json_object"}))
    sid = stack.history.add("alice", "I like tea [sim:bad-json]")
    await stack.archive(sid)
    letters = await eventually(
        lambda: stream_messages_at(
            stack.nats_url, subjects.DEADLETTER_STREAM.name, subjects.deadletter("memory")
        ),
        lambda found: len(found) >= 1,
    )
    letter = DeadLetter.model_validate_json(letters[0].data or b"")
    assert letter.deliveries == 2
    assert "gave up after 2 attempt(s)" in letter.reason
    assert "model answer (prompt) is not a MemoryExtraction" in letter.reason
    # Two attempts: the ladder walked once, then the remembered way.
    assert [way(body) for body in await sim_requests(base_url)] == [
        "json_schema", "json_object", "prompt", "prompt",
    ]


@pytest.mark.parametrize(
    "refuse",
    [frozenset(), frozenset({"stream_options"}), frozenset({"tools"}),
     frozenset({"stream_options", "tools"})],
    ids=["openai", "no-stream-options", "no-tools", "neither"],
)
async def test_chat_jobs_complete_whatever_options_the_server_takes(
    start_agent: StartAgent, refuse: frozenset[str]
) -> None:
    stack = await start_agent(sim_refuse=refuse)
    lookups = Lookups()
    lookups.remember("u1", "The user said: I drink tea")
    broker = NatsBroker(stack.settings.nats_url)
    lookups.router(broker, stack)
    await broker.start()
    await broker.connection.flush()
    try:
        await run_two_jobs(stack, refuse)
    finally:
        await broker.stop()


async def run_two_jobs(stack: Any, refuse: frozenset[str]) -> None:
    first = await stack.final_state((await stack.submit("hello there")).job_id)
    assert first.status == "completed", first.error
    assert first.reply is not None and first.reply.content == "Echo: hello there (turn 1)"

    asked = "what do you remember about tea"
    second = await stack.final_state((await stack.submit(asked)).job_id)
    assert second.status == "completed", second.error
    assert second.reply is not None
    if "tools" in refuse:  # offered no tools, the model answers in text
        assert second.reply.content == f"Echo: {asked} (turn 1)" and second.tools == ()
    else:
        assert second.tools == ("recall_memories",)

    bodies = (await stack.sim_seen())["items"]
    options = [("stream_options" in b, "tools" in b) for b in bodies]
    usage, tools = "stream_options" not in refuse, "tools" not in refuse
    # The first call learns what the server refuses (one retry per refused option);
    # every later call leaves it out at once.
    learned = [(True, True)]
    if not usage:
        learned.append((False, True))
    if not tools:
        learned.append((usage, False))
    assert options[: len(learned)] == learned
    assert all(o == (usage, tools) for o in options[len(learned):])
    assert len(options) == len(learned) + (1 if not tools else 2)
