"""The simulated model's reply rules and its HTTP surface, in memory."""

import json

import httpx
import pytest

from services.simllm import model
from services.simllm.app import create_app
from services.simllm.config import Settings


def test_reply_echoes_last_user_message_and_counts_turns() -> None:
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Echo: hi (turn 1)"},
        {"role": "user", "content": "hello"},
    ]
    assert model.reply_for(messages) == "Echo: hello (turn 2)"


def test_reply_reads_content_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    messages = [{"role": "user", "content": parts}]
    assert model.reply_for(messages) == "Echo: ab (turn 1)"


def test_tokens_are_words_with_trailing_space_and_rejoin_to_the_text() -> None:
    text = "Echo: two  words (turn 1)"
    tokens = model.tokenize(text)
    assert tokens == ["Echo: ", "two  ", "words ", "(turn ", "1)"]
    assert "".join(tokens) == text


def test_directives() -> None:
    assert model.directives_for([{"role": "user", "content": "x [sim:error]"}]).error
    slow = model.directives_for([{"role": "user", "content": "x [sim:slow=1.5]"}])
    assert slow == model.Directives(error=False, latency=1.5)
    # Only the last user message counts.
    old = [{"role": "user", "content": "[sim:error]"}, {"role": "user", "content": "fine"}]
    assert model.directives_for(old) == model.Directives()


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = create_app(Settings(llm_sim_latency=0, llm_sim_tokens_per_second=0))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


async def test_stream_sends_role_then_tokens_then_stop_then_done(client: httpx.AsyncClient) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    async with client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Echo: one two (turn 1)"


async def test_missing_messages_is_an_openai_style_400(client: httpx.AsyncClient) -> None:
    async with client:
        response = await client.post("/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "messages" in error["message"]


async def test_requests_are_recorded(client: httpx.AsyncClient) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "remember me"}]}
    async with client:
        answer = await client.post("/v1/chat/completions", json=body)
        seen = (await client.get("/sim/requests")).json()["items"]
    assert answer.json()["usage"]["completion_tokens"] == 5
    assert seen == [body]
