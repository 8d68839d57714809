"""The simulated model's tool and structured-output rules, and how it sends them over HTTP."""

import json
from typing import Any

import httpx
import pytest

from services.simllm.app import create_app
from services.simllm.config import Settings
from services.simllm.tools import SimToolCall, answer_for, tool_calls_for

OFFERED = ["recall_memories", "search_history"]
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in OFFERED]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def calls(text: str, offered: list[str] = OFFERED) -> list[tuple[str, Any]]:
    return [(c.name, json.loads(c.arguments)) for c in tool_calls_for([user(text)], offered)]


def test_recall_and_remember_call_recall_memories_with_the_word_after_about() -> None:
    assert calls("What do you remember about peanuts?") == [
        ("recall_memories", {"query": "peanuts"})
    ]
    assert calls("please RECALL me") == [("recall_memories", {"query": ""})]
    assert calls("recall something about") == [("recall_memories", {"query": ""})]


def test_search_history_for_takes_the_rest_of_the_text() -> None:
    assert calls("Search history for green tea.") == [("search_history", {"query": "green tea"})]


def test_directives_and_plain_text() -> None:
    assert calls("hello") == []
    assert calls("remember me", offered=[]) == []
    assert calls("remember", offered=["search_history"]) == []
    assert calls("x [sim:unknown-tool]") == [("no_such_tool", {})]
    assert calls("x [sim:bad-tool-args]") == [("recall_memories", {"query": 42})]
    assert calls("x [sim:loop-tools]") == [("recall_memories", {"query": "loop"})]


def tool_round(text: str, result: str, name: str = "recall_memories") -> list[dict[str, Any]]:
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}}
    return [
        {"role": "system", "content": "s"},
        user(text),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": result},
    ]


def test_after_tool_results_the_reply_echoes_them() -> None:
    messages = tool_round("what do you remember about tea", "- likes tea")
    assert tool_calls_for(messages, OFFERED) == ()
    answer = answer_for({"messages": messages, "tools": TOOLS})
    assert answer.calls == ()
    assert answer.text == (
        "Echo: what do you remember about tea (turn 1) [recall_memories: - likes tea]"
    )


def test_loop_directive_calls_a_tool_even_after_results() -> None:
    messages = tool_round("go [sim:loop-tools]", "r")
    assert tool_calls_for(messages, OFFERED) == (
        SimToolCall("recall_memories", '{"query": "loop"}'),
    )


def test_memory_extraction_answers_json() -> None:
    body = {
        "messages": [user("I am allergic to peanuts"), user("hi")],
        "response_format": {"type": "json_schema", "json_schema": {"name": "memory_extraction"}},
    }
    answer = answer_for(body)
    assert json.loads(answer.text) == {"memories": ["The user said: I am allergic to peanuts"]}


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = create_app(Settings(llm_sim_latency=0, llm_sim_tokens_per_second=0))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


def chunks_of(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


async def test_streamed_tool_call_comes_in_fragments_by_index(client: httpx.AsyncClient) -> None:
    body = {
        "model": "m", "stream": True, "tools": TOOLS,
        "messages": [user("what do you remember about peanuts")],
    }
    async with client:
        response = await client.post("/v1/chat/completions", json=body)
    deltas = [c["choices"][0]["delta"] for c in chunks_of(response)]
    fragments = [t for d in deltas for t in d.get("tool_calls") or ()]
    first, rest = fragments[0], fragments[1:]
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["function"] == {"name": "recall_memories", "arguments": ""}
    assert rest and all("id" not in f and "name" not in f["function"] for f in rest)
    arguments = "".join(f["function"]["arguments"] for f in rest)
    assert json.loads(arguments) == {"query": "peanuts"}
    assert not any(d.get("content") for d in deltas)
    assert chunks_of(response)[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_whole_tool_call_and_whole_extraction(client: httpx.AsyncClient) -> None:
    ask = {"model": "m", "tools": TOOLS, "messages": [user("search history for tea")]}
    extract = {
        "model": "m", "stream": True, "messages": [user("My cat is Tom")],
        "response_format": {"type": "json_schema", "json_schema": {"name": "memory_extraction"}},
    }
    async with client:
        whole = (await client.post("/v1/chat/completions", json=ask)).json()
        streamed = await client.post("/v1/chat/completions", json=extract)
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (tool_call,) = choice["message"]["tool_calls"]
    assert tool_call["function"]["name"] == "search_history"
    assert json.loads(tool_call["function"]["arguments"]) == {"query": "tea"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks_of(streamed))
    assert json.loads(text) == {"memories": ["The user said: My cat is Tom"]}
