"""The simulated model served by uvicorn, driven through the real OpenAI SDK."""

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from services.launcher.natsserver import free_port
from services.simllm import model
from services.simllm.config import Settings
from services.simllm.server import running

pytestmark = pytest.mark.integration


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    settings = Settings(
        simllm_port=free_port(), llm_sim_latency=0.01, llm_sim_tokens_per_second=200
    )
    async with running(settings) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="sim", timeout=10, max_retries=0)
    yield sdk
    await sdk.close()


MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "Echo: first (turn 1)"},
    {"role": "user", "content": "second question"},
]


async def test_non_streaming_completion(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == model.reply_for(MESSAGES)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


async def test_streaming_completion(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    pieces: list[str] = []
    finish: list[str | None] = []
    async with stream:
        async for chunk in stream:
            choice = chunk.choices[0]
            pieces.append(choice.delta.content or "")
            finish.append(choice.finish_reason)
    assert "".join(pieces) == "Echo: second question (turn 2)"
    assert len([p for p in pieces if p]) == len(model.tokenize("Echo: second question (turn 2)"))
    assert finish[-1] == "stop"


async def test_error_directive_raises_in_the_sdk(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "boom [sim:error]"}]
        )
    assert caught.value.status_code == 500


async def test_models_and_recorded_requests(client: openai.AsyncOpenAI, base_url: str) -> None:
    models = await client.models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    async with httpx.AsyncClient() as http:
        seen = (await http.get(f"{base_url.removesuffix('/v1')}/sim/requests")).json()["items"]
    assert seen[-1]["messages"] == MESSAGES
