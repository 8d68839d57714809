"""The model behind the agent: OpenAI's SDK, streaming chat completions as text pieces.

A compatible server that refuses ``stream_options`` or ``tools`` (recognised by
:func:`services.runtime.llmcompat.refuses`) is asked again at once without the
option, and never asked with it again in this process: the reply comes without
token usage, or without tools (the model then answers in text).
"""

import itertools
import math
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

import httpx2
import openai

from services.agent.config import Settings
from services.agent.errors import LLMError
from services.runtime.llmcompat import Feature, ModelQuirks, refuses
from services.runtime.openai_errors import describe as describe_openai_error

# Statuses worth another attempt; any other 4xx will fail the same way again.
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

    def __init__(
        self,
        settings: Settings,
        on_usage: Callable[[Any], None] | None = None,
        quirks: ModelQuirks | None = None,
    ) -> None:
        self.on_usage = on_usage  # told the token usage the server reports, when asked for
        self.model = settings.llm_model
        # Options the server refused (stream_options, tools), dropped from then on.
        self.quirks = quirks or ModelQuirks("agent")
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
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "stream": True}
        if tools and self.sends("tools"):
            body["tools"] = list(tools)
        if self.on_usage is not None and self.sends("stream_options"):
            body["stream_options"] = {"include_usage": True}
        try:
            stream = await self._open(body)
            async with stream:
                async for chunk in stream:
                    try:
                        pieces = list(_pieces(chunk))
                    except (AttributeError, TypeError) as exc:
                        raise LLMError(f"model sent a malformed chunk: {str(chunk)[:200]}") from exc
                    if not pieces and self.on_usage is not None and isinstance(chunk, dict):
                        self.on_usage(chunk.get("usage"))  # the last chunk carries it
                    for piece in pieces:
                        yield piece
        except openai.OpenAIError as exc:
            reason, retryable = describe_openai_error(exc)
            raise LLMError(reason, retryable=retryable) from exc

    def sends(self, option: Feature) -> bool:
        """Tell whether requests still carry ``option`` (the server has not refused it)."""
        return self.quirks.get(self.model, option, "send") == "send"

    async def _open(self, body: dict[str, Any]) -> openai.AsyncStream[object]:
        """Post the request; an option the server refuses is dropped, remembered, retried once."""
        while True:
            try:
                # The SDK's own client (auth, retries, timeouts, SSE, errors) on its raw
                # ``post``: ``chat.completions.create`` walks every parameter through its
                # type transform and builds a pydantic model per chunk, ~5 ms of CPU per call
                # that a replica holding thousands of calls cannot spare (bench/README.md).
                # Our parameters are plain JSON already, and chunks come back as sent.
                return await next(self._turn).post(
                    "/chat/completions", body=body, cast_to=object, stream=True,
                    stream_cls=openai.AsyncStream[object],
                )
            except openai.APIStatusError as exc:
                if (option := self._refused(body, exc)) is None:
                    raise
                del body[option]
                self.quirks.choose(self.model, option, "drop", str(exc.message))

    @staticmethod
    def _refused(body: Mapping[str, Any], exc: openai.APIStatusError) -> Feature | None:
        """Name the option of ``body`` the server refused, if that is what it said."""
        if "stream_options" in body and refuses(exc, "stream_options"):
            return "stream_options"
        # Tools are refused on the first round: later, a 400 naming a tool is about a
        # tool message of the conversation, which dropping ``tools`` would not cure.
        first_round = not any(m.get("role") == "tool" for m in body["messages"])
        if "tools" in body and first_round and refuses(exc, "tools"):
            return "tools"
        return None

    async def close(self) -> None:
        """Close the SDK's connections."""
        for client in self.clients:
            await client.close()


def _pieces(chunk: object) -> Iterator[str | ToolCallDelta]:
    """Return the text and tool-call fragments of one streamed chunk (a JSON object)."""
    if not isinstance(chunk, dict):
        raise TypeError("a chunk is a JSON object")
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if content := delta.get("content"):
            yield content
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            yield ToolCallDelta(
                index=call.get("index", 0),
                id=call.get("id"),
                name=function.get("name"),
                arguments=function.get("arguments") or "",
            )
