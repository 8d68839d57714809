"""Run chat jobs: one delivery of ``chat.requested``, top to bottom, and how it is settled.

    load → wait for its turn → start → generate → store → finish

- **load**: a first delivery carries the record's revision, so it reads nothing;
  a redelivery reads the record (a crash, a retry, a replica that stopped).
- **turn**: a job naming the job it follows watches that one until it ends
  (per-session order without polling); a long wait hands the slot back.
- **start**: ``running``, one more attempt, by compare-and-set; the agent is the
  only writer of a delivered job, so a lost race means another delivery took it.
- **generate**: the model's reply, streamed to the job's events.
- **store**: the reply goes to history (idempotent per job).
- **finish**: the final state, then its event and, for a job without a reply,
  history's note that it ended; only then is the message acked.

Every settlement (ack, retry, drop with a dead letter) is decided in this module.
A cancel (:mod:`services.agent.cancels`) ends a job that has not stored a reply.
"""

import asyncio
from collections.abc import Awaitable, Callable, Container
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import structlog
from pydantic import ValidationError

from contracts.base import utcnow
from contracts.chat import JobError, JobState, RequestChat
from contracts.history import AppendMessage, EndJob
from services.agent.config import Settings
from services.agent.errors import AgentError, JobConflict, SessionGone, job_error_for
from services.agent.generate import Generator
from services.agent.ports import Delivery, Events, History, JobStore
from services.runtime.heartbeat import beating
from services.runtime.kv import Versioned
from services.runtime.meta import RequestMeta
from services.runtime.settle import ACK, DROP, Verdict, give_up, retry

log = structlog.get_logger("chatbus.agent")
START_ROUNDS = 5
T = TypeVar("T")
Job = Versioned[JobState]


class JobCancelled(Exception):
    """A user asked to stop the job."""


class Running:
    """A job running in this replica: what a cancel must stop, and what a hand-back must undo."""

    def __init__(self) -> None:
        self.cancelled = False
        self.stopped = asyncio.Event()  # set by a cancel: a step ends at once, whatever it awaits
        self.task: asyncio.Future[Any] | None = None
        self.job: Job | None = None  # the latest state this delivery wrote
        self.counted = False  # this delivery counted an attempt

    def cancel(self) -> None:
        """Stop the job's current step (closing the model's stream) and every later one."""
        self.cancelled = True
        self.stopped.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def step(self, work: Awaitable[T]) -> T:
        """Run a step a cancel may stop; raise :class:`JobCancelled` when it did.

        The step ends on the cancel itself, not on its task's cancellation: nats-py can
        swallow a ``CancelledError`` while it flushes, and the step would run on.
        """
        if self.cancelled:
            asyncio.ensure_future(work).cancel()
            raise JobCancelled
        task = asyncio.ensure_future(work)
        task.add_done_callback(_retrieve)
        self.task = task
        stop = asyncio.ensure_future(self.stopped.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # the replica is stopping, not the job
            raise
        finally:
            stop.cancel()
            self.task = None
        if task.done() and not self.cancelled:
            return task.result()
        task.cancel()
        raise JobCancelled


def _retrieve(task: "asyncio.Future[Any]") -> None:
    """Read a step's outcome so a step left behind by a cancel logs no 'never retrieved'."""
    if not task.cancelled():
        task.exception()


class JobRunner:
    """Take a chat job from queued to completed, failed or cancelled, once per finished job."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        history: History,
        generator: Generator,
        events: Events,
        cancels: Container[UUID],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.history = history
        self.generator = generator
        self.events = events
        self.cancels = cancels
        self.clock = clock
        self.running: dict[UUID, Running] = {}
        self.stopping = False  # set when the replica cancels its jobs to hand them back

    def cancel(self, job_id: UUID) -> None:
        """Stop a job if it runs (or waits for its turn) in this replica."""
        if (run := self.running.get(job_id)) is not None:
            log.info("cancel heard; job stopped", job_id=str(job_id))
            run.cancel()

    async def handle(self, delivery: Delivery) -> Verdict:
        """Run the job a delivery carries and say how to settle it."""
        try:
            request = RequestChat.model_validate_json(delivery.body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
            )
            log.error("malformed chat request dead-lettered", reason=problems)
            return give_up(f"not a valid RequestChat: {problems}")
        incoming = RequestMeta.from_headers(delivery.headers)
        # The job outlives the HTTP request that queued it: keep its ids, not its deadline.
        meta = RequestMeta(incoming.request_id, incoming.user_id or request.user_id)
        with structlog.contextvars.bound_contextvars(job_id=str(request.job_id)):
            if request.job_id in self.running:
                log.info("job already running in this replica; delivery postponed")
                return retry(self.settings.agent_ack_wait)
            run = self.running[request.job_id] = Running()
            if request.job_id in self.cancels:
                run.cancelled = True
            try:
                async with beating(delivery.in_progress, self.settings.heartbeat_interval):
                    return await self._run(request, delivery, meta, run)
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                return await self._hand_back(run)
            except AgentError as exc:
                log.warning("job step failed; delivery retried", error=str(exc))
                return retry(self.settings.agent_retry_delay)
            except Exception:
                log.exception("job delivery failed unexpectedly; retried")
                return retry(self.settings.agent_retry_delay)
            finally:
                self.running.pop(request.job_id, None)

    async def _run(
        self, request: RequestChat, delivery: Delivery, meta: RequestMeta, run: Running
    ) -> Verdict:
        job = await self._load(request, first=delivery.num_delivered == 1)
        if job.value.finished:
            return await self._ended_before(job.value, meta)
        try:
            if not await run.step(self._turn(request)):
                log.info("the session's earlier job is still unfinished; retried later")
                return retry(self.settings.agent_order_retry_delay)
        except JobCancelled:
            return await self._finish(job, {"status": "cancelled"}, meta)
        started = await self._start(request, job, meta)
        if isinstance(started, Verdict):
            return started
        run.job, run.counted = started, True
        log.info("job started", attempt=started.value.attempts)
        try:
            reply = await run.step(self.generator.run(request, started.value.attempts, meta))
            command = AppendMessage(
                user_id=request.user_id, session_id=request.session_id,
                job_id=request.job_id, role="assistant", content=reply.text,
            )
            message = await self.history.append_message(command, meta)
        except JobCancelled:
            log.info("job cancelled; no reply stored")
            return await self._finish(started, {"status": "cancelled"}, meta)
        except SessionGone:
            log.info("the job's session is gone; job cancelled")
            return await self._finish(started, {"status": "cancelled"}, meta)
        except Exception as exc:
            if not isinstance(exc, AgentError):
                log.exception("job failed unexpectedly")
            return await self._attempt_failed(started, exc, meta)
        outcome = {"status": "completed", "reply": message, "tools": reply.tools}
        verdict = await self._finish(started, outcome, meta)
        log.info("job completed", chars=len(reply.text))
        return verdict

    async def _load(self, request: RequestChat, *, first: bool) -> Job:
        """Return the job's state: from the request on a first delivery, else from the bucket."""
        queued = JobState(
            id=request.job_id, user_id=request.user_id, session_id=request.session_id,
            status="queued", created_at=request.created_at,
        )
        if first and request.revision > 0:
            return Versioned(queued, request.revision)
        if (found := await self.jobs.get(request.job_id)) is not None:
            return found
        try:  # the record expired or was never written: the job still deserves an answer
            return await self.jobs.create(queued)
        except JobConflict:
            if (found := await self.jobs.get(request.job_id)) is None:
                raise
            return found

    async def _turn(self, request: RequestChat) -> bool:
        """Wait until the job this one follows has ended; False when the wait ran out."""
        if request.follows is None:
            return True
        log.info("waiting for the session's earlier job", follows=str(request.follows))
        return await self.jobs.wait_ended(request.follows, self.settings.agent_order_wait)

    async def _start(self, request: RequestChat, job: Job, meta: RequestMeta) -> Job | Verdict:
        """Mark the job running by compare-and-set, counting the attempt."""
        for _ in range(START_ROUNDS):
            state = job.value
            if state.finished:
                return await self._ended_before(state, meta)
            if request.job_id in self.cancels:
                return await self._finish(job, {"status": "cancelled"}, meta)
            if state.attempts >= self.settings.agent_max_attempts:
                reason = f"gave up after {state.attempts} attempts (the last one never ended)"
                return await self._give_up(job, "max_attempts", reason, meta)
            running = state.model_copy(update={
                "status": "running", "attempts": state.attempts + 1,
                "started_at": state.started_at or self.clock(),
            })
            try:
                started = await self.jobs.update(running, job.revision)
            except JobConflict:
                job = await self._load(request, first=False)
                continue
            await self._quietly(self.events.status(running, meta))
            return started
        log.info("job kept changing while starting; retried")
        return retry(self.settings.agent_retry_delay)

    async def _attempt_failed(self, job: Job, exc: BaseException, meta: RequestMeta) -> Verdict:
        error = job_error_for(exc)
        attempts = job.value.attempts
        if not getattr(exc, "retryable", True):
            return await self._give_up(job, error.code, error.message, meta)
        if attempts >= self.settings.agent_max_attempts:
            reason = f"gave up after {attempts} attempts: {error.message}"
            return await self._give_up(job, "max_attempts", reason, meta)
        log.warning("attempt failed; retrying", attempt=attempts, error=error.message)
        queued = job.value.model_copy(update={"status": "queued"})
        try:  # readers see the retry coming; the next delivery moves it on either way
            await self.jobs.update(queued, job.revision)
            await self._quietly(self.events.status(queued, meta))
        except AgentError as err:
            log.warning("retry not recorded in the job", error=str(err))
        return retry(self.settings.agent_retry_delay)

    async def _give_up(self, job: Job, code: str, reason: str, meta: RequestMeta) -> Verdict:
        error = JobError.model_validate({"code": code, "message": reason[:2000]})
        verdict = await self._finish(job, {"status": "failed", "error": error}, meta)
        if verdict is DROP:
            log.error("job failed", code=code, reason=reason, attempts=job.value.attempts)
            return give_up(reason)
        return verdict

    async def _finish(self, job: Job, outcome: dict[str, Any], meta: RequestMeta) -> Verdict:
        """Write the final state, then announce it; ack (drop a failed job)."""
        final = job.value.model_copy(update={**outcome, "finished_at": self.clock()})
        try:
            await self.jobs.update(final, job.revision)
        except JobConflict:
            latest = await self.jobs.get(job.value.id)
            if latest is not None and latest.value.finished:
                return await self._ended_before(latest.value, meta)
            log.info("another delivery took the job over; this outcome is dropped")
            return ACK
        await self._announce(final, meta)
        return DROP if final.status == "failed" else ACK

    async def _ended_before(self, state: JobState, meta: RequestMeta) -> Verdict:
        """Settle a delivery of a job that has ended: announce it again (idempotent), ack."""
        log.info("job already finished; not run again", status=state.status)
        await self._announce(state, meta)
        return ACK

    async def _announce(self, state: JobState, meta: RequestMeta) -> None:
        """Store the final event, and tell history a job without a reply ended."""
        await self.events.final(state, meta)
        if state.status != "completed":
            await self.history.end_job(EndJob(user_id=state.user_id, job_id=state.id), meta)

    async def _hand_back(self, run: Running) -> Verdict:
        """Put a job this stopping replica will not finish back in the queue, attempt undone."""
        if run.job is not None and run.counted:
            state = run.job.value
            queued = state.model_copy(
                update={"status": "queued", "attempts": max(0, state.attempts - 1)}
            )
            try:
                await self.jobs.update(queued, run.job.revision)
            except AgentError as exc:
                log.warning("stopped job not written back as queued", error=str(exc))
        log.info("replica stopping; job handed back to the queue")
        return retry(0.0)

    @staticmethod
    async def _quietly(event: Awaitable[None]) -> None:
        try:
            await event
        except AgentError as exc:
            log.debug("job event lost", error=str(exc))
