"""The agent's context and tool loop: prompt building, the tool registry, the loop's rounds."""

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from services.runtime.lanes import Lanes

from contracts.history import MessageRecord, SearchMessages
from contracts.memory import MemoryRecord, RecallMemories
from services.agent.config import Settings
from services.agent.errors import RecallError, Settle, ToolRoundsExceeded
from services.agent.llm import ChatMessage, ToolCallDelta
from services.agent.ports import Lookups
from services.agent.prompt import build_context, estimate_tokens, within_budget
from services.agent.service import JobRunner
from services.agent.toolloop import CallAccumulator, run_tool_loop
from services.agent.tools import DEFAULT_TOOLS, ToolContext, ToolRegistry
from services.runtime.bus import RequestMeta
from tests.unit.test_agent_fakes import (
    T0,
    FakeDelivery,
    FakeEvents,
    FakeHistory,
    FakeJobs,
    FakeKV,
    make_request,
    queued,
)

Chunk = str | ToolCallDelta


def memory(user: str, content: str, persona: str = "friend") -> MemoryRecord:
    return MemoryRecord(
        id=uuid.uuid4(), user_id=user, session_id=uuid.uuid4(), persona=persona,
        content=content, created_at=T0,
    )


def message(content: str, role: str = "user") -> MessageRecord:
    return MessageRecord.model_validate({
        "id": uuid.uuid4(), "session_id": uuid.uuid4(), "user_id": "u1", "role": role,
        "content": content, "created_at": T0, "job_id": uuid.uuid4(),
    })


def call(name: str, arguments: str, index: int = 0, call_id: str = "call_1") -> list[Chunk]:
    """Fragments of one tool call, split the way OpenAI streams them."""
    head = ToolCallDelta(index=index, id=call_id, name=name)
    return [head, *(ToolCallDelta(index=index, arguments=arguments[i : i + 5])
                    for i in range(0, len(arguments), 5))]


class ScriptedLLM:
    """Answer each call with the next scripted round (the last one repeats)."""

    def __init__(self, *rounds: Sequence[Chunk]) -> None:
        self.rounds = [list(r) for r in rounds]
        self.calls: list[tuple[list[ChatMessage], list[Mapping[str, Any]] | None]] = []
        self.gate_round: int | None = None  # this round waits for ``gate`` before writing
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.closed = 0

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> AsyncGenerator[Chunk, None]:
        number = len(self.calls)
        self.calls.append((list(messages), list(tools) if tools else None))
        try:
            if number == self.gate_round:
                self.waiting.set()
                await self.gate.wait()
            for chunk in self.rounds[min(number, len(self.rounds) - 1)]:
                yield chunk
        finally:
            self.closed += 1


class FakeMemories:
    def __init__(self, *records: MemoryRecord, error: Exception | None = None) -> None:
        self.records = list(records)
        self.error = error
        self.queries: list[RecallMemories] = []

    async def recall(self, query: RecallMemories, meta: RequestMeta) -> list[MemoryRecord]:
        self.queries.append(query)
        if self.error is not None:
            raise self.error
        return [
            r for r in self.records
            if r.user_id == query.user_id
            and (query.persona is None or r.persona == query.persona)
            and (not query.query or query.query.lower() in r.content.lower())
        ][: query.limit]


class FakeSearch:
    def __init__(self, *records: MessageRecord) -> None:
        self.records = list(records)
        self.queries: list[SearchMessages] = []

    async def search(self, query: SearchMessages, meta: RequestMeta) -> list[MessageRecord]:
        self.queries.append(query)
        return [r for r in self.records if r.user_id == query.user_id
                and query.query.lower() in r.content.lower()]


def context(memories: FakeMemories | None = None, user: str = "u1") -> ToolContext:
    lookups = Lookups(memories or FakeMemories(), FakeSearch())
    return ToolContext(user, "friend", RequestMeta("req-t", user), lookups)


async def run(llm: ScriptedLLM, ctx: ToolContext, rounds: int = 4) -> tuple[Any, list[str]]:
    said: list[str] = []

    async def sink(piece: str) -> None:
        said.append(piece)

    prompt: list[ChatMessage] = [{"role": "user", "content": "hi"}]
    result = await run_tool_loop(llm, prompt, DEFAULT_TOOLS, ctx, rounds, sink)
    return result, said


# ---- the prompt -----------------------------------------------------------------------


def test_prompt_has_persona_memories_history_and_the_new_message() -> None:
    request = make_request("and now?")
    recent = [message("second", "assistant"), message("first")]  # newest first
    facts = [memory("u1", "The user said: I like tea"), memory("u1", "The user said: I am Bo")]
    prompt = build_context(
        request, recent, facts, "You are {persona}.", limit=20, token_budget=3000
    )
    system = prompt[0]["content"] or ""
    assert prompt[0]["role"] == "system" and system.startswith("You are friend.")
    assert "- The user said: I like tea\n- The user said: I am Bo" in system
    assert [(m["role"], m["content"]) for m in prompt[1:]] == [
        ("user", "first"), ("assistant", "second"), ("user", "and now?"),
    ]


def test_prompt_without_memories_is_the_plain_system_prompt() -> None:
    prompt = build_context(make_request(), [], [], "You are {persona}.", limit=5, token_budget=10)
    assert prompt[0] == {"role": "system", "content": "You are friend."}


def test_token_budget_drops_the_oldest_messages_first() -> None:
    assert estimate_tokens("a" * 8) == 2 and estimate_tokens("a" * 9) == 3
    old, middle, new = message("o" * 40), message("m" * 40), message("n" * 40)  # 10 tokens each
    assert within_budget([old, middle, new], 25) == [middle, new]
    assert within_budget([old, middle, new], 30) == [old, middle, new]
    assert within_budget([old, middle, new], 5) == []
    request = make_request("q")
    prompt = build_context(
        request, [new, middle, old], [], "S", limit=20, token_budget=20
    )
    assert [m["content"] for m in prompt[1:]] == ["m" * 40, "n" * 40, "q"]


# ---- the registry ---------------------------------------------------------------------


def test_registry_offers_each_tool_with_its_argument_schema() -> None:
    specs = {s["function"]["name"]: s["function"] for s in DEFAULT_TOOLS.specs()}
    assert set(specs) == {"recall_memories", "search_history"}
    recall = specs["recall_memories"]
    assert recall["description"].startswith("Recall long-term memories")
    assert set(recall["parameters"]["properties"]) == {"query"}
    assert recall["parameters"]["additionalProperties"] is False


async def test_adding_a_tool_is_one_decorated_function() -> None:
    registry = ToolRegistry()

    class Shout(BaseModel):
        model_config = ConfigDict(extra="forbid")
        word: str

    @registry.tool("shout")
    async def shout(args: Shout, ctx: ToolContext) -> str:
        """Shout a word back."""
        return f"{args.word.upper()} for {ctx.user_id}"

    assert registry.specs()[0]["function"]["description"] == "Shout a word back."
    assert await registry.call("shout", '{"word": "hey"}', context()) == "HEY for u1"
    with pytest.raises(ValueError, match="registered already"):
        registry.tool("shout")(shout)


async def test_invalid_arguments_and_unknown_tools_come_back_as_text() -> None:
    ctx = context()
    bad = await DEFAULT_TOOLS.call("recall_memories", '{"query": 42}', ctx)
    assert bad.startswith("error: invalid arguments for recall_memories: query:")
    assert "valid string" in bad
    assert "invalid arguments" in await DEFAULT_TOOLS.call("search_history", "{not json", ctx)
    unknown = await DEFAULT_TOOLS.call("drop_tables", "{}", ctx)
    assert unknown == (
        "error: there is no tool named 'drop_tables' "
        "(available: recall_memories, search_history)"
    )


async def test_a_tool_only_ever_queries_the_jobs_user() -> None:
    facts = FakeMemories(memory("alice", "alice likes tea"), memory("bob", "bob likes coffee"))
    ctx = context(facts, user="bob")
    refused = await DEFAULT_TOOLS.call(
        "recall_memories", '{"query": "", "user_id": "alice"}', ctx
    )
    assert "user_id: Extra inputs are not permitted" in refused
    assert facts.queries == []  # refused before any lookup
    found = await DEFAULT_TOOLS.call("recall_memories", '{"query": "likes"}', ctx)
    assert found == "- bob likes coffee"
    assert [(q.user_id, q.persona, q.query) for q in facts.queries] == [("bob", "friend", "likes")]


async def test_a_failed_lookup_is_a_tool_result_not_a_crash() -> None:
    ctx = context(FakeMemories(error=RecallError("memory did not recall: no service")))
    result = await DEFAULT_TOOLS.call("recall_memories", "{}", ctx)
    assert result == "error: recall_memories failed: memory did not recall: no service"


# ---- the loop -------------------------------------------------------------------------


def test_fragments_are_put_together_by_index() -> None:
    acc = CallAccumulator()
    for chunk in [*call("a", '{"query": "x"}', 0, "id-a"), *call("b", "{}", 1, "id-b")]:
        assert isinstance(chunk, ToolCallDelta)
        acc.add(chunk)
    calls = acc.calls()
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("id-a", "a", {"query": "x"}), ("id-b", "b", {}),
    ]


async def test_one_tool_round_then_the_answer() -> None:
    facts = FakeMemories(memory("u1", "The user said: I am allergic to peanuts"))
    llm = ScriptedLLM(
        call("recall_memories", '{"query": "peanuts"}', call_id="c1"), ["You are ", "allergic."]
    )
    result, said = await run(llm, context(facts))
    assert result.text == "You are allergic." and said == ["You are ", "allergic."]
    assert result.tools == ("recall_memories",)
    assert len(llm.calls) == 2
    first_tools = llm.calls[0][1]
    assert first_tools is not None and len(first_tools) == 2
    second = llm.calls[1][0]
    assert second[-2] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "recall_memories", "arguments": '{"query": "peanuts"}'}}],
    }
    assert second[-1] == {
        "role": "tool", "tool_call_id": "c1",
        "content": "- The user said: I am allergic to peanuts",
    }


async def test_two_calls_in_one_round_both_run() -> None:
    llm = ScriptedLLM(
        [*call("recall_memories", "{}", 0, "c1"),
         *call("search_history", '{"query": "x"}', 1, "c2")],
        ["done"],
    )
    result, _ = await run(llm, context())
    assert result.tools == ("recall_memories", "search_history")
    results = [m for m in llm.calls[1][0] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in results] == [
        ("c1", "no memories found"), ("c2", "no messages found"),
    ]


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("recall_memories", '{"query": 42}', "error: invalid arguments for recall_memories"),
        ("no_such_tool", "{}", "error: there is no tool named 'no_such_tool'"),
    ],
)
async def test_bad_calls_are_answered_to_the_model(
    name: str, arguments: str, expected: str
) -> None:
    llm = ScriptedLLM(call(name, arguments), ["sorry"])
    result, _ = await run(llm, context())
    assert result.text == "sorry"
    tool_message = llm.calls[1][0][-1]
    assert tool_message["role"] == "tool"
    assert (tool_message["content"] or "").startswith(expected)
    assert result.tools == (() if name == "no_such_tool" else (name,))


async def test_a_model_that_keeps_calling_tools_hits_the_round_limit() -> None:
    llm = ScriptedLLM(call("recall_memories", "{}"))
    with pytest.raises(ToolRoundsExceeded, match=r"tool round limit \(2 rounds\)") as info:
        await run(llm, context(), rounds=2)
    assert info.value.retryable is False
    assert len(llm.calls) == 3  # two rounds of tools, then the call that still wanted one


async def test_without_a_context_no_tools_are_offered() -> None:
    llm = ScriptedLLM(["plain"])

    async def sink(_: str) -> None:
        return None

    prompt: list[ChatMessage] = [{"role": "user", "content": "hi"}]
    result = await run_tool_loop(llm, prompt, DEFAULT_TOOLS, None, 4, sink)
    assert result.text == "plain" and llm.calls[0][1] is None


# ---- the job runner with tools ---------------------------------------------------------


def tool_runner(
    llm: ScriptedLLM, memories: FakeMemories, **settings: Any
) -> tuple[JobRunner, FakeJobs, FakeEvents]:
    config = Settings(
        openai_base_url="http://sim.invalid/v1", instance="test", agent_retry_delay=0.5,
        **settings,
    )
    jobs, events = FakeJobs(), FakeEvents()
    runner = JobRunner(
        config, jobs, FakeHistory(), llm, events, Lanes(FakeKV()),  # type: ignore[arg-type]
        lookups=Lookups(memories, FakeSearch()), tools=DEFAULT_TOOLS,
    )
    return runner, jobs, events


async def test_job_records_its_tools_and_prompt_carries_memories() -> None:
    facts = FakeMemories(memory("u1", "The user said: I am allergic to peanuts"))
    llm = ScriptedLLM(call("recall_memories", '{"query": "peanuts"}'), ["Noted", "."])
    runner, jobs, events = tool_runner(llm, facts, agent_memory_limit=7)
    request = make_request("what do you remember about peanuts")
    jobs.put(queued(request))

    verdict = await runner.handle(FakeDelivery(request.model_dump_json().encode()))

    assert verdict.settle is Settle.ACK
    state = jobs.state(request.job_id)
    assert state.status == "completed" and state.tools == ("recall_memories",)
    assert state.reply is not None and state.reply.content == "Noted."
    assert [(d.seq, d.text) for d in events.deltas] == [(0, "Noted"), (1, ".")]
    assert facts.queries[0] == RecallMemories(user_id="u1", persona="friend", limit=7)
    assert "I am allergic to peanuts" in (llm.calls[0][0][0]["content"] or "")


async def test_memory_service_down_the_job_still_answers() -> None:
    llm = ScriptedLLM(["fine"])
    runner, jobs, _ = tool_runner(llm, FakeMemories(error=RecallError("no responders")))
    request = make_request()
    jobs.put(queued(request))
    verdict = await runner.handle(FakeDelivery(request.model_dump_json().encode()))
    assert verdict.settle is Settle.ACK
    state = jobs.state(request.job_id)
    assert state.status == "completed" and state.tools == ()


async def test_round_limit_fails_the_job_at_once_with_llm_error() -> None:
    llm = ScriptedLLM(call("recall_memories", "{}"))
    runner, jobs, events = tool_runner(llm, FakeMemories(), agent_tool_rounds=1)
    request = make_request()
    jobs.put(queued(request))
    verdict = await runner.handle(FakeDelivery(request.model_dump_json().encode()))
    assert verdict.settle is Settle.DROP
    state = jobs.state(request.job_id)
    assert state.status == "failed" and state.attempts == 1 and state.error is not None
    assert state.error.code == "llm_error"
    assert "tool round limit (1 rounds)" in state.error.message
    assert len(events.failed_events) == 1


async def test_cancel_during_the_second_round_closes_its_stream() -> None:
    llm = ScriptedLLM(call("recall_memories", "{}"), ["never"])
    llm.gate_round = 1
    runner, jobs, _ = tool_runner(llm, FakeMemories())
    request = make_request()
    jobs.put(queued(request))
    task = asyncio.create_task(runner.handle(FakeDelivery(request.model_dump_json().encode())))
    await asyncio.wait_for(llm.waiting.wait(), 10)
    assert runner.cancel(request.job_id)
    verdict = await asyncio.wait_for(task, 10)
    assert verdict.settle is Settle.ACK
    assert jobs.state(request.job_id).status == "cancelled"
    assert llm.closed == 2  # both rounds' streams were closed
