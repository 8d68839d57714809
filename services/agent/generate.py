"""The model calls of a job: load the context, run the tool loop, keep the delivery alive."""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import structlog
from pydantic import ValidationError

from contracts.chat import ChatDelta, JobState, RequestChat
from contracts.history import MAX_PAGE, ListMessages, MessageRecord
from contracts.memory import MemoryRecord, RecallMemories
from services.agent.config import Settings
from services.agent.control import JobControl
from services.agent.errors import EventError, LLMError, RecallError
from services.agent.llm import ChatMessage
from services.agent.ports import LLM, Delivery, Events, History, Lookups
from services.agent.prompt import build_context
from services.agent.toolloop import run_tool_loop
from services.agent.tools import ToolContext, ToolRegistry
from services.runtime.bus import RequestMeta

log = structlog.get_logger("chatbus.agent")
LeaseKeeper = Callable[[UUID], Awaitable[JobState | None]]


class Generator:
    """Produce a job's reply text under heartbeats, or None when the job was cancelled."""

    def __init__(
        self,
        settings: Settings,
        history: History,
        llm: LLM,
        events: Events,
        lease: LeaseKeeper,
        lookups: Lookups | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.history = history
        self.llm = llm
        self.events = events
        self.lease = lease
        self.lookups = lookups  # None: no memories in the prompt and no tools
        self.tools = tools or ToolRegistry()

    async def run(
        self, request: RequestChat, delivery: Delivery, meta: RequestMeta, control: JobControl
    ) -> str | None:
        """Stream the reply; return None when the job was cancelled meanwhile."""
        recent: list[MessageRecord] = []
        if (limit := self.settings.agent_context_messages) > 0:
            query = ListMessages(
                user_id=request.user_id, session_id=request.session_id,
                limit=min(limit + 1, MAX_PAGE),  # one more: the job's own message is dropped
            )
            recent = await self.history.list_messages(query, meta)
        memories = await self._memories(request, meta)
        prompt = build_context(
            request, recent, memories, self.settings.agent_system_prompt,
            limit=limit, token_budget=self.settings.agent_context_tokens,
        )
        work = asyncio.create_task(self._stream(request, prompt, meta, control))
        control.work = work
        if control.cancelled.is_set():
            work.cancel()  # the cancel came before the model call could start
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(request.job_id, delivery, control, stop))
        try:
            return await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the replica is stopping, not the job
            log.info("job cancelled while the model was writing; stream closed")
            return None
        finally:
            control.work = None
            # The flag ends the loop even when a cancel is swallowed inside the NATS client
            # (nats-py catches CancelledError while flushing); the bounded wait never hangs.
            stop.set()
            watcher.cancel()
            await asyncio.wait([watcher], timeout=self.settings.heartbeat_interval + 5)

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

    async def _stream(
        self, request: RequestChat, prompt: list[ChatMessage], meta: RequestMeta,
        control: JobControl,
    ) -> str:
        deltas = DeltaBuffer(self.events, request, meta, self.settings.agent_delta_interval)
        ctx = None
        if self.lookups is not None:
            ctx = ToolContext(request.user_id, request.persona, meta, self.lookups)
        result = await run_tool_loop(
            self.llm, prompt, self.tools, ctx, self.settings.agent_tool_rounds, deltas.add
        )
        await deltas.flush()
        if not result.text.strip():
            raise LLMError("the model returned an empty reply")
        control.tools = result.tools
        if result.tools:
            log.info("model used tools", tools=list(result.tools))
        return result.text

    async def _watch(
        self, job_id: UUID, delivery: Delivery, control: JobControl, stop: asyncio.Event
    ) -> None:
        """Heartbeat and renew the lease; stop the work when a cancel was missed on the bus."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.settings.heartbeat_interval)
                return
            except TimeoutError:
                pass
            try:
                await delivery.in_progress()
                latest = await self.lease(job_id)
            except Exception as exc:
                log.warning("heartbeat failed", error=repr(exc))
                continue
            if stop.is_set():
                return
            if latest is not None and (latest.cancel_requested or latest.status == "cancelled"):
                log.info("cancel found at heartbeat")
                control.cancel()
                return


class DeltaBuffer:
    """Publish a reply's text as deltas, at most one per ``interval`` while it streams.

    A model can send a chunk per token, and a delta per chunk costs a publish each: the
    text gathered since the last delta goes out once ``interval`` has passed, and the
    rest when the stream ends (:meth:`flush`). Deltas are best effort: the reply itself
    is in the final job state.
    """

    def __init__(
        self, events: Events, request: RequestChat, meta: RequestMeta, interval: float
    ) -> None:
        self.events = events
        self.job_id = request.job_id
        self.meta = meta
        self.interval = interval
        self.seq = 0
        self.pending: list[str] = []
        self.sent_at = -math.inf

    async def add(self, piece: str) -> None:
        """Take the next piece of text; publish what is gathered if the interval passed."""
        self.pending.append(piece)
        if time.monotonic() - self.sent_at >= self.interval:
            await self.flush()

    async def flush(self) -> None:
        """Publish the text gathered so far, if any."""
        if not self.pending:
            return
        delta = ChatDelta(job_id=self.job_id, seq=self.seq, text="".join(self.pending))
        self.pending.clear()
        self.seq += 1
        self.sent_at = time.monotonic()
        try:
            await self.events.delta(delta, self.meta)
        except EventError as exc:
            log.debug("delta lost", error=str(exc))
