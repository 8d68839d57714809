"""The tool loop: stream a completion, run the tools the model called, call it again.

Hand-written on chat completions. The openai-agents SDK was weighed and left out: its
runner owns the model call, so we could not keep our own streaming of deltas, cancelling
a job by closing its HTTP stream, the lease heartbeats around the call and the
simulated server's plain chat-completions surface; and for two tools a runner adds
nothing this loop does not do in a page.

Each round streams a completion with ``tools``; text pieces go to ``on_text`` as they
come, tool-call fragments are put together by ``index`` (the first fragment of a call
carries its id and name, the later ones pieces of its arguments). When the model called
tools, they run concurrently, the assistant's ``tool_calls`` message and one ``tool``
message per call are appended, and the model is called again. A model still calling
tools after ``rounds`` rounds fails the job (:class:`ToolRoundsExceeded`).
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

from services.agent.errors import ToolRoundsExceeded
from services.agent.llm import ChatMessage, ToolCallDelta
from services.agent.ports import LLM
from services.agent.tools import ToolContext, ToolSet

TextSink = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ToolCall:
    """A whole tool call of the model."""

    id: str
    name: str
    arguments: str


@dataclass
class _Pending:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class CallAccumulator:
    """Put streamed tool-call fragments together by their ``index``."""

    def __init__(self) -> None:
        self._calls: dict[int, _Pending] = {}

    def add(self, delta: ToolCallDelta) -> None:
        """Take one fragment."""
        pending = self._calls.setdefault(delta.index, _Pending())
        if delta.id:
            pending.id = delta.id
        if delta.name:
            pending.name += delta.name
        pending.arguments.append(delta.arguments)

    def calls(self) -> list[ToolCall]:
        """Return the calls in index order (a call without id gets one from its index)."""
        return [
            ToolCall(p.id or f"call_{index}", p.name, "".join(p.arguments))
            for index, p in sorted(self._calls.items())
        ]


class ToolSink(Protocol):
    """Where the loop reports each tool call as it starts and ends (the job's events)."""

    async def called(self, call: ToolCall) -> None: ...
    async def returned(self, call: ToolCall, result: str) -> None: ...


@dataclass(frozen=True)
class LoopResult:
    """The reply text and the names of the tools that ran, in first-call order."""

    text: str
    tools: tuple[str, ...]


async def run_tool_loop(
    llm: LLM,
    prompt: Sequence[ChatMessage],
    registry: ToolSet,
    ctx: ToolContext | None,
    rounds: int,
    on_text: TextSink,
    on_tool: ToolSink | None = None,
) -> LoopResult:
    """Answer ``prompt``, running tools for the model between rounds; no tools without ``ctx``."""
    messages = list(prompt)
    offered = registry.specs() if ctx is not None and registry else []
    pieces: list[str] = []
    used: dict[str, None] = {}
    for round_ in range(rounds + 1):
        calls = CallAccumulator()
        said: list[str] = []
        # Without tools the model is called exactly as before: an empty ``tools`` is an error.
        stream = llm.stream(messages, tools=offered) if offered else llm.stream(messages)
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, ToolCallDelta):
                    calls.add(chunk)
                elif chunk:
                    said.append(chunk)
                    await on_text(chunk)
        pieces.extend(said)
        wanted = calls.calls()
        if not wanted or ctx is None:
            return LoopResult("".join(pieces), tuple(used))
        if round_ == rounds:
            raise ToolRoundsExceeded(rounds)
        used.update((call.name, None) for call in wanted if call.name in registry)
        results = await asyncio.gather(*(_run(registry, call, ctx, on_tool) for call in wanted))
        messages.append(assistant_calls("".join(said), wanted))
        messages.extend(
            {"role": "tool", "tool_call_id": call.id, "content": result}
            for call, result in zip(wanted, results, strict=True)
        )
    raise AssertionError("unreachable: the last round returns or raises")


async def _run(
    registry: ToolSet, call: ToolCall, ctx: ToolContext, on_tool: ToolSink | None
) -> str:
    if on_tool is not None:
        await on_tool.called(call)
    result = await registry.call(call.name, call.arguments, ctx)
    if on_tool is not None:
        await on_tool.returned(call, result)
    return result


def assistant_calls(text: str, calls: Sequence[ToolCall]) -> ChatMessage:
    """Return the assistant message that asked for ``calls``."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }
