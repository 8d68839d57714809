"""The model behind the agent: OpenAI's SDK, streaming chat completions as text pieces."""

import itertools
import math
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, cast

import httpx2
import openai

from services.agent.config import Settings
from services.agent.errors import LLMError

# Statuses worth another attempt; any other 4xx will fail the same way again.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
POOL_SLACK = 16  # retries and connections still closing
POOL_SHARD = 128


class ChatMessage(TypedDict):
    """One prompt message (tool calls and results only in the rounds of the tool loop)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]


@dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of a tool call as streamed: the first of an ``index`` has id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class OpenAIChat:
    """Stream replies from an OpenAI-compatible server."""

    def __init__(self, settings: Settings) -> None:
        self.model = settings.llm_model
        # The SDK's default pool stops at 1,000 connections, and its HTTP pool scans every
        # connection it holds on each request and each response close (quadratic under
        # load): calls are spread round-robin over clients of at most POOL_SHARD connections.
        room = settings.agent_concurrency + POOL_SLACK
        shards = math.ceil(room / POOL_SHARD)
        per_shard = math.ceil(room / shards) + POOL_SLACK
        self.clients = [
            openai.AsyncOpenAI(
                api_key=settings.api_key,
                base_url=settings.openai_base_url,
                timeout=settings.llm_timeout,
                max_retries=settings.llm_max_retries,
                http_client=openai.DefaultAsyncHttpx2Client(
                    limits=httpx2.Limits(
                        max_connections=per_shard, max_keepalive_connections=per_shard
                    ),
                    timeout=settings.llm_timeout,
                ),
            )
            for _ in range(shards)
        ]
        self._turn = itertools.cycle(self.clients)

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> AsyncGenerator[str | ToolCallDelta, None]:
        """Yield the reply's text pieces, and tool-call fragments when ``tools`` are offered."""
        extra: dict[str, Any] = {"tools": list(tools)} if tools else {}
        try:
            stream = await next(self._turn).chat.completions.create(
                model=self.model, messages=cast(Any, list(messages)), stream=True, **extra
            )
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
                        for call in choice.delta.tool_calls or ():
                            function = call.function
                            yield ToolCallDelta(
                                index=call.index,
                                id=call.id,
                                name=function.name if function else None,
                                arguments=(function.arguments or "") if function else "",
                            )
        except openai.APIStatusError as exc:
            retryable = exc.status_code >= 500 or exc.status_code in RETRYABLE_STATUSES
            raise LLMError(
                f"model answered {exc.status_code}: {exc.message}", retryable=retryable
            ) from exc
        except openai.APITimeoutError as exc:
            raise LLMError("model call timed out") from exc
        except openai.APIConnectionError as exc:
            raise LLMError(f"model unreachable: {exc}") from exc
        except openai.OpenAIError as exc:
            raise LLMError(f"model call failed: {exc}") from exc

    async def close(self) -> None:
        """Close the SDK's connections."""
        for client in self.clients:
            await client.close()
