"""One attempt at a job's reply: load the context, run the tool loop, stream the job's events.

Returns the reply (text, the tools that ran) instead of writing to shared objects; the
caller decides what to store. Deltas gather for ``AGENT_DELTA_INTERVAL`` seconds each
(a model can send a chunk per token; a delta per chunk would cost a publish each).
"""

import asyncio
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import structlog
from pydantic import ValidationError

from contracts.chat import TOOL_RESULT_EVENT_CHARS, ChatDelta, RequestChat, ToolCalled, ToolReturned
from contracts.history import MAX_PAGE, ListMessages, MessageRecord
from contracts.memory import MemoryRecord, RecallMemories
from services.agent.config import Settings
from services.agent.errors import EventError, LLMError, RecallError
from services.agent.ports import LLM, Events, History, Lookups
from services.agent.prompt import build_context
from services.agent.toolloop import ToolCall, run_tool_loop
from services.agent.tools import ToolContext, ToolRegistry, ToolSet
from services.runtime.meta import RequestMeta

log = structlog.get_logger("chatbus.agent")


@dataclass(frozen=True)
class Reply:
    """What one attempt produced: the reply's text and the tools the model called."""

    text: str
    tools: tuple[str, ...]


class Generator:
    """Produce a job's reply; cancelling the task that runs it closes the model's stream."""

    def __init__(
        self,
        settings: Settings,
        history: History,
        llm: LLM,
        events: Events,
        lookups: Lookups | None = None,
        tools: ToolSet | None = None,
    ) -> None:
        self.settings = settings
        self.history = history
        self.llm = llm
        self.events = events
        self.lookups = lookups  # None: no memories in the prompt and no tools
        self.tools: ToolSet = tools if tools is not None else ToolRegistry()

    async def run(self, request: RequestChat, attempt: int, meta: RequestMeta) -> Reply:
        """Answer the job's message; raise an :class:`AgentError` when the attempt failed."""
        recent, memories = await asyncio.gather(
            self._recent(request, meta), self._memories(request, meta)
        )
        prompt = build_context(
            request, recent, memories, self.settings.agent_system_prompt,
            limit=self.settings.agent_context_messages,
            token_budget=self.settings.agent_context_tokens,
        )
        interval = self.settings.agent_delta_interval
        stream = EventStream(self.events, request, attempt, meta, interval)
        ctx = None
        if self.lookups is not None:
            ctx = ToolContext(request.user_id, request.persona, meta, self.lookups)
        result = await run_tool_loop(
            self.llm, prompt, self.tools, ctx, self.settings.agent_tool_rounds,
            stream.text, stream,
        )
        await stream.flush()
        if not result.text.strip():
            raise LLMError("the model returned an empty reply")
        if result.tools:
            log.info("model used tools", tools=list(result.tools))
        return Reply(result.text, result.tools)

    async def _recent(self, request: RequestChat, meta: RequestMeta) -> list[MessageRecord]:
        if (limit := self.settings.agent_context_messages) == 0:
            return []
        query = ListMessages(
            user_id=request.user_id, session_id=request.session_id,
            limit=min(limit + 1, MAX_PAGE),  # one more: the job's own message is dropped
        )
        return await self.history.list_messages(query, meta)

    async def _memories(self, request: RequestChat, meta: RequestMeta) -> list[MemoryRecord]:
        """Recall the user's memories with this persona; without the memory service, none."""
        if self.lookups is None or (limit := self.settings.agent_memory_limit) == 0:
            return []
        try:
            query = RecallMemories(user_id=request.user_id, persona=request.persona, limit=limit)
            return await self.lookups.memories.recall(query, meta)
        except (RecallError, ValidationError) as exc:
            log.warning("memories not recalled; answering without them", error=str(exc))
            return []


class EventStream:
    """Turn an attempt's text and tool calls into the job's events, in the order they happen.

    Text gathers into a delta at most every ``interval`` seconds; pending text goes out
    before a tool event, so a replay reads exactly what the model did, in order. Events
    are best effort: the reply itself is in the final job state.
    """

    def __init__(
        self, events: Events, request: RequestChat, attempt: int, meta: RequestMeta,
        interval: float,
    ) -> None:
        self.events = events
        self.job_id = request.job_id
        self.attempt = attempt
        self.meta = meta
        self.interval = interval
        self.pending: list[str] = []
        self.sent_at = -math.inf

    async def text(self, piece: str) -> None:
        """Take the next piece of text; publish what is gathered if the interval passed."""
        self.pending.append(piece)
        if time.monotonic() - self.sent_at >= self.interval:
            await self.flush()

    async def flush(self) -> None:
        """Publish the text gathered so far, if any."""
        if not self.pending:
            return
        delta = ChatDelta(job_id=self.job_id, attempt=self.attempt, text="".join(self.pending))
        self.pending.clear()
        self.sent_at = time.monotonic()
        await self._send(self.events.delta(delta, self.meta))

    async def called(self, call: ToolCall) -> None:
        """Publish a tool call as the model sent it."""
        await self.flush()
        event = ToolCalled(
            job_id=self.job_id, attempt=self.attempt, call_id=call.id, name=call.name,
            arguments=call.arguments,
        )
        await self._send(self.events.tool_called(event, self.meta))

    async def returned(self, call: ToolCall, result: str) -> None:
        """Publish what a tool answered, cut to the documented size."""
        event = ToolReturned(
            job_id=self.job_id, attempt=self.attempt, call_id=call.id, name=call.name,
            result=result[:TOOL_RESULT_EVENT_CHARS],
            truncated=len(result) > TOOL_RESULT_EVENT_CHARS,
        )
        await self._send(self.events.tool_returned(event, self.meta))

    @staticmethod
    async def _send(publish: Awaitable[None]) -> None:
        try:
            await publish
        except EventError as exc:
            log.debug("job event lost", error=str(exc))
