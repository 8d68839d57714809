"""Run chat jobs: the rules for one delivery of ``chat.requested``, free of any framework.

A delivery ends in a :class:`Verdict`: ack (done, or nothing to do), retry (nak
with a delay; attempts are counted in the job state) or drop (term, after the
failure was recorded and announced). The outcome is made durable before the
verdict, so a crash in between only means a redelivery, which finds the job
finished, announces its outcome again (deduplicated) and acks.
"""

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from datetime import datetime
from uuid import UUID

import structlog
from pydantic import ValidationError

from contracts.base import utcnow
from contracts.chat import ChatDelta, JobError, JobState, RequestChat
from contracts.history import MAX_PAGE, AppendMessage, ListMessages, MessageRecord
from services.agent.config import Settings
from services.agent.errors import (
    AgentError,
    EventError,
    JobConflict,
    LLMError,
    Settle,
    job_error_for,
)
from services.agent.jobs import Versioned
from services.agent.llm import ChatMessage
from services.agent.outcomes import Outcomes
from services.agent.ports import (
    ACK,
    DROP,
    LLM,
    Delivery,
    Events,
    History,
    JobStore,
    Verdict,
)
from services.agent.prompt import build_prompt
from services.runtime.bus import RequestMeta

log = structlog.get_logger("chatbus.agent")


class JobRunner:
    """Take a chat job from queued to completed or failed, at most once per finished job."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        history: History,
        llm: LLM,
        events: Events,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.history = history
        self.llm = llm
        self.events = events
        self.clock = clock
        self.outcomes = Outcomes(events, clock)
        self.in_flight: set[UUID] = set()

    async def handle(self, delivery: Delivery) -> Verdict:
        """Run the job a delivery carries and say how to settle it."""
        incoming = RequestMeta.from_headers(delivery.headers)
        try:
            request = RequestChat.model_validate_json(delivery.body)
        except ValidationError as exc:
            return await self._reject_malformed(delivery, incoming, exc)
        # The job outlives the HTTP request that queued it: keep its ids, not its deadline.
        meta = RequestMeta(incoming.request_id, incoming.user_id or request.user_id)
        with structlog.contextvars.bound_contextvars(job_id=str(request.job_id)):
            if request.job_id in self.in_flight:
                log.info("job already running in this replica; delivery postponed")
                return Verdict(Settle.RETRY, self.settings.agent_ack_wait)
            self.in_flight.add(request.job_id)
            try:
                return await self._run(request, delivery, meta)
            except AgentError as exc:
                log.warning("job step failed; delivery retried", error=str(exc))
                return Verdict(Settle.RETRY, self.settings.agent_retry_delay)
            except Exception:
                log.exception("job delivery failed unexpectedly; retried")
                return Verdict(Settle.RETRY, self.settings.agent_retry_delay)
            finally:
                self.in_flight.discard(request.job_id)

    async def _run(self, request: RequestChat, delivery: Delivery, meta: RequestMeta) -> Verdict:
        current = await self._load(request)
        if current.state.finished:
            log.info("job already finished; not run again", status=current.state.status)
            await self.outcomes.announce(current.state, delivery, meta)
            return ACK
        if current.state.attempts >= self.settings.agent_max_attempts:
            reason = f"gave up after {current.state.attempts} attempts (the last one never ended)"
            return await self._give_up(current, request, delivery, meta, "max_attempts", reason)
        running = current.state.model_copy(
            update={
                "status": "running",
                "attempts": current.state.attempts + 1,
                "started_at": current.state.started_at or self.clock(),
            }
        )
        try:
            current = await self.jobs.update(running, current.revision)
        except JobConflict:
            log.info("job changed while starting (a parallel delivery or a cancel); retried")
            return Verdict(Settle.RETRY, self.settings.agent_retry_delay)
        log.info("job started", attempt=running.attempts)
        try:
            text = await self._generate(request, delivery, meta)
            if text is None:
                return ACK
            command = AppendMessage(
                user_id=request.user_id, session_id=request.session_id,
                job_id=request.job_id, role="assistant", content=text,
            )
            reply = await self.history.append_message(command, meta)
        except AgentError as exc:
            return await self._attempt_failed(current, request, delivery, meta, exc)
        except Exception as exc:
            log.exception("job failed unexpectedly")
            return await self._attempt_failed(current, request, delivery, meta, exc)
        done = await self._finish(current, request, {"status": "completed", "reply": reply})
        if done is not None:
            await self.outcomes.announce(done, delivery, meta)
            log.info("job completed", chars=len(text))
        return ACK

    async def _load(self, request: RequestChat) -> Versioned:
        """Return the job's state, creating it queued when the gateway's write is missing."""
        if (found := await self.jobs.get(request.job_id)) is not None:
            return found
        state = JobState(
            id=request.job_id, user_id=request.user_id, session_id=request.session_id,
            status="queued", created_at=request.created_at,
        )
        try:
            return await self.jobs.create(state)
        except JobConflict:
            if (found := await self.jobs.get(request.job_id)) is None:
                raise
            return found

    async def _generate(
        self, request: RequestChat, delivery: Delivery, meta: RequestMeta
    ) -> str | None:
        """Stream the reply under heartbeats; return None when the job was cancelled meanwhile."""
        recent: list[MessageRecord] = []
        if (limit := self.settings.agent_context_messages) > 0:
            query = ListMessages(
                user_id=request.user_id, session_id=request.session_id,
                limit=min(limit + 1, MAX_PAGE),  # one more: the job's own message is dropped
            )
            recent = await self.history.list_messages(query, meta)
        prompt = build_prompt(request, recent, self.settings.agent_system_prompt, limit)
        work = asyncio.create_task(self._stream(request, prompt, meta))
        watcher = asyncio.create_task(self._watch(request.job_id, delivery, work))
        try:
            return await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the replica is stopping, not the job
            log.info("job cancelled while running; reply abandoned")
            return None
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])

    async def _stream(
        self, request: RequestChat, prompt: list[ChatMessage], meta: RequestMeta
    ) -> str:
        pieces: list[str] = []
        async with aclosing(self.llm.stream(prompt)) as stream:
            async for piece in stream:
                delta = ChatDelta(job_id=request.job_id, seq=len(pieces), text=piece)
                pieces.append(piece)
                try:
                    await self.events.delta(delta, meta)
                except EventError as exc:
                    log.debug("delta lost", error=str(exc))
        text = "".join(pieces)
        if not text.strip():
            raise LLMError("the model returned an empty reply")
        return text

    async def _watch(self, job_id: UUID, delivery: Delivery, work: asyncio.Task[str]) -> None:
        """Keep the delivery alive while the job runs; stop the work when the job is cancelled."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await delivery.in_progress()
                current = await self.jobs.get(job_id)
            except Exception as exc:
                log.warning("heartbeat failed", error=repr(exc))
                continue
            if current is not None and current.state.status == "cancelled":
                work.cancel()
                return

    async def _attempt_failed(
        self, current: Versioned, request: RequestChat, delivery: Delivery,
        meta: RequestMeta, exc: BaseException,
    ) -> Verdict:
        error = job_error_for(exc)
        attempts = current.state.attempts
        retryable = getattr(exc, "retryable", True)
        exhausted = (
            attempts >= self.settings.agent_max_attempts
            or delivery.num_delivered >= self.settings.max_deliveries
        )
        if retryable and not exhausted:
            log.warning("attempt failed; retrying", attempt=attempts, error=error.message)
            return Verdict(Settle.RETRY, self.settings.agent_retry_delay)
        if not retryable:
            return await self._give_up(current, request, delivery, meta, error.code, error.message)
        reason = f"gave up after {attempts} attempts: {error.message}"
        return await self._give_up(current, request, delivery, meta, "max_attempts", reason)

    async def _give_up(
        self, current: Versioned, request: RequestChat, delivery: Delivery,
        meta: RequestMeta, code: str, reason: str,
    ) -> Verdict:
        error = JobError.model_validate({"code": code, "message": reason[:2000]})
        failed = await self._finish(current, request, {"status": "failed", "error": error})
        if failed is not None:
            await self.outcomes.announce(failed, delivery, meta)
            log.error("job failed", code=code, reason=reason, attempts=failed.attempts)
        return DROP

    async def _finish(
        self, current: Versioned, request: RequestChat, outcome: dict[str, object]
    ) -> JobState | None:
        """Write a final state; return None when the job ended otherwise meanwhile."""
        for _ in range(2):
            final = current.state.model_copy(update={**outcome, "finished_at": self.clock()})
            try:
                await self.jobs.update(final, current.revision)
                return final
            except JobConflict:
                latest = await self.jobs.get(request.job_id)
                if latest is None or latest.state.finished:
                    log.info("job ended elsewhere; outcome discarded")
                    return None
                current = latest  # a parallel delivery bumped it: write over it once
        raise JobConflict(f"job {request.job_id} kept changing")

    async def _reject_malformed(
        self, delivery: Delivery, meta: RequestMeta, exc: ValidationError
    ) -> Verdict:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        reason = f"not a valid RequestChat: {problems}"
        try:
            await self.outcomes.dead_letter(delivery, reason, meta)
        except EventError as err:
            log.warning("malformed chat request not dead-lettered; retried", error=str(err))
            return Verdict(Settle.RETRY, self.settings.agent_retry_delay)
        log.error("malformed chat request dead-lettered", reason=reason)
        return DROP
