"""Run chat jobs: the rules for one delivery of ``chat.requested``, free of any framework.

A delivery ends in a :class:`Verdict`: ack (done, or nothing to do), retry (nak
with a delay; attempts are counted in the job state, only when the model call
starts) or drop (term, after the failure was recorded and announced). The
outcome is made durable before the verdict, so a crash in between only means a
redelivery, which finds the job finished, announces its outcome again
(deduplicated), takes it out of its lanes and acks.

A job runs only when it heads its session lane (per-session order); it can be
cancelled at pickup, while the model writes (the stream is closed at once) or
just before its reply is stored; a reply already stored wins.
"""

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from pydantic import ValidationError

from contracts.base import utcnow
from contracts.chat import JobError, JobState, RequestChat
from contracts.history import AppendMessage
from services.agent.config import Settings
from services.agent.control import JobControl, RunningJobs
from services.agent.errors import AgentError, EventError, JobConflict, Settle, job_error_for
from services.agent.generate import Generator
from services.agent.jobs import Versioned
from services.agent.order import SessionOrder
from services.agent.outcomes import Outcomes
from services.agent.ports import (
    ACK,
    DROP,
    LLM,
    Delivery,
    Events,
    History,
    JobStore,
    LaneStore,
    Lookups,
    Verdict,
)
from services.agent.states import modify
from services.agent.tools import ToolRegistry
from services.runtime.bus import RequestMeta

log = structlog.get_logger("chatbus.agent")
START_ROUNDS = 5


class JobRunner:
    """Take a chat job from queued to completed, failed or cancelled, once per finished job."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        history: History,
        llm: LLM,
        events: Events,
        lanes: LaneStore,
        clock: Callable[[], datetime] = utcnow,
        lookups: Lookups | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.history = history
        self.events = events
        self.clock = clock
        self.outcomes = Outcomes(events, clock)
        self.order = SessionOrder(settings, lanes, jobs)
        self.generator = Generator(
            settings, history, llm, events, self.refresh_lease, lookups, tools
        )
        self.running = RunningJobs()
        self.stopping = False  # set when the replica cancels its jobs to hand them back

    def cancel(self, job_id: UUID) -> bool:
        """Abort a job running in this replica; return whether it runs here."""
        return self.running.cancel(job_id)

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
            if request.job_id in self.running:
                log.info("job already running in this replica; delivery postponed")
                return Verdict(Settle.RETRY, self.settings.agent_ack_wait)
            control = self.running.add(request.job_id)
            try:
                return await self._run(request, delivery, meta, control)
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                return await self._hand_back(control)
            except AgentError as exc:
                log.warning("job step failed; delivery retried", error=str(exc))
                return Verdict(Settle.RETRY, self.settings.agent_retry_delay)
            except Exception:
                log.exception("job delivery failed unexpectedly; retried")
                return Verdict(Settle.RETRY, self.settings.agent_retry_delay)
            finally:
                self.running.discard(request.job_id)

    async def _run(
        self, request: RequestChat, delivery: Delivery, meta: RequestMeta, control: JobControl
    ) -> Verdict:
        current = await self._load(request)
        if (ended := await self._ended(current.state, delivery, meta)) is not None:
            return ended
        if not await self.order.wait_turn(request, delivery):
            return Verdict(Settle.RETRY, self.settings.agent_order_retry_delay)
        started = await self._start(request, current, delivery, meta, control)
        if isinstance(started, Verdict):
            return started
        log.info("job started", attempt=started.state.attempts)
        try:
            text = await self.generator.run(request, delivery, meta, control)
            if text is None or await self._cancel_wanted(request.job_id, control):
                return await self._cancelled(request.job_id)
            command = AppendMessage(
                user_id=request.user_id, session_id=request.session_id,
                job_id=request.job_id, role="assistant", content=text,
            )
            reply = await self.history.append_message(command, meta)
        except AgentError as exc:
            return await self._attempt_failed(started, delivery, meta, exc)
        except Exception as exc:
            log.exception("job failed unexpectedly")
            return await self._attempt_failed(started, delivery, meta, exc)
        done = await self._finish(
            request.job_id, {"status": "completed", "reply": reply, "tools": control.tools}
        )
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

    async def _ended(
        self, state: JobState, delivery: Delivery, meta: RequestMeta
    ) -> Verdict | None:
        """Settle a job that must not run: it has ended, or its cancel was asked for."""
        if state.finished:
            log.info("job already finished; not run again", status=state.status)
            await self.order.leave(state)  # a crash may have come between the two writes
            await self.outcomes.announce(state, delivery, meta)
            return ACK
        if state.cancel_requested:
            return await self._cancelled(state.id)
        return None

    async def _start(
        self, request: RequestChat, current: Versioned, delivery: Delivery, meta: RequestMeta,
        control: JobControl,
    ) -> Versioned | Verdict:
        """Mark the job running with a fresh lease, counting the attempt."""
        for round_ in range(START_ROUNDS):
            if round_:
                current = await self._load(request)
                if (ended := await self._ended(current.state, delivery, meta)) is not None:
                    return ended
            if current.state.attempts >= self.settings.agent_max_attempts:
                attempts = current.state.attempts
                reason = f"gave up after {attempts} attempts (the last one never ended)"
                return await self._give_up(current.state, delivery, meta, "max_attempts", reason)
            running = current.state.model_copy(
                update={
                    "status": "running",
                    "attempts": current.state.attempts + 1,
                    "started_at": current.state.started_at or self.clock(),
                    "lease_expires_at": self._lease(),
                }
            )
            try:
                started = await self.jobs.update(running, current.revision)
            except JobConflict:
                continue  # the gateway changed it (a cancel?): look again
            control.counted = True
            return started
        log.info("job kept changing while starting; retried")
        return Verdict(Settle.RETRY, self.settings.agent_retry_delay)

    def _lease(self) -> datetime:
        return self.clock() + timedelta(seconds=self.settings.agent_ack_wait)

    async def refresh_lease(self, job_id: UUID) -> JobState | None:
        """Push the running job's lease forward; return its latest state."""
        lease = self._lease()

        def extend(state: JobState) -> JobState | None:
            if state.status != "running":
                return None
            return state.model_copy(update={"lease_expires_at": lease})

        change = await modify(self.jobs, job_id, extend)
        return change.latest.state if change.latest is not None else None

    async def _cancel_wanted(self, job_id: UUID, control: JobControl) -> bool:
        if control.cancelled.is_set():
            return True
        latest = await self.jobs.get(job_id)
        return latest is not None and (
            latest.state.cancel_requested or latest.state.status == "cancelled"
        )

    async def _cancelled(self, job_id: UUID) -> Verdict:
        if await self._finish(job_id, {"status": "cancelled"}) is not None:
            log.info("job cancelled; no reply stored")
        return ACK

    async def _hand_back(self, control: JobControl) -> Verdict:
        """Put a job this stopping replica will not finish back in the queue, attempt undone."""
        undo = 1 if control.counted else 0

        def requeue(state: JobState) -> JobState | None:
            if state.status != "running":
                return None
            return state.model_copy(
                update={
                    "status": "queued",
                    "attempts": max(0, state.attempts - undo),
                    "lease_expires_at": None,
                }
            )

        try:
            await modify(self.jobs, control.job_id, requeue)
        except AgentError as exc:
            log.warning("stopped job not written back as queued", error=str(exc))
        log.info("replica stopping; job handed back to the queue")
        return Verdict(Settle.RETRY, 0.0)

    async def _attempt_failed(
        self, current: Versioned, delivery: Delivery, meta: RequestMeta, exc: BaseException
    ) -> Verdict:
        error = job_error_for(exc)
        attempts = current.state.attempts
        if not getattr(exc, "retryable", True):
            return await self._give_up(current.state, delivery, meta, error.code, error.message)
        if attempts < self.settings.agent_max_attempts:
            log.warning("attempt failed; retrying", attempt=attempts, error=error.message)
            return Verdict(Settle.RETRY, self.settings.agent_retry_delay)
        reason = f"gave up after {attempts} attempts: {error.message}"
        return await self._give_up(current.state, delivery, meta, "max_attempts", reason)

    async def _give_up(
        self, state: JobState, delivery: Delivery, meta: RequestMeta, code: str, reason: str
    ) -> Verdict:
        error = JobError.model_validate({"code": code, "message": reason[:2000]})
        failed = await self._finish(state.id, {"status": "failed", "error": error})
        if failed is not None:
            await self.outcomes.announce(failed, delivery, meta)
            log.error("job failed", code=code, reason=reason, attempts=failed.attempts)
        return DROP

    async def _finish(self, job_id: UUID, outcome: dict[str, Any]) -> JobState | None:
        """Write a final state and leave the lanes; None when the job had ended already."""
        now = self.clock()

        def end(state: JobState) -> JobState | None:
            if state.finished:
                return None
            return state.model_copy(
                update={**outcome, "finished_at": now, "lease_expires_at": None}
            )

        change = await modify(self.jobs, job_id, end)
        if change.latest is not None:
            await self.order.leave(change.latest.state)
        if not change.written:
            log.info("job ended elsewhere; outcome discarded")
            return None
        return change.latest.state if change.latest is not None else None

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
