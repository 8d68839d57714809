"""Rules of chat jobs the gateway enforces: leases, lanes, backpressure and cancel (no HTTP here).

Lanes (see :mod:`services.runtime.lanes`): a queued job joins its user's lane,
capped at ``max_active`` unfinished jobs (429 past it), and its session's lane,
whose order the agent follows. Whoever writes a job's final state removes it
from both; readers prune entries of jobs that ended or are gone.
"""

from datetime import datetime
from typing import Literal
from uuid import UUID

import structlog

from contracts import subjects
from contracts.base import ErrorCode, utcnow
from contracts.chat import CancelJob, JobError, JobLane, JobState
from services.gateway.bus import GatewayBus
from services.gateway.errors import Conflict, GatewayError, NotFound, TooManyJobs, Unavailable
from services.runtime.bus import BusError, BusTimeout, BusUnavailable, RequestMeta
from services.runtime.lanes import LaneFull

Multitask = Literal["enqueue", "reject", "interrupt"]
CAS_ROUNDS = 10
log = structlog.get_logger("chatbus.gateway.jobs")


def lease_expired(state: JobState, now: datetime | None = None) -> bool:
    """Tell whether a running job's worker stopped renewing its lease."""
    return (
        state.status == "running"
        and state.lease_expires_at is not None
        and state.lease_expires_at < (now or utcnow())
    )


class Jobs:
    """Read, admit, fail and cancel jobs in the job bucket and the lanes."""

    def __init__(
        self, bus: GatewayBus, *, timeout: float, max_active: int, cancel_wait: float
    ) -> None:
        self.bus = bus
        self.timeout = timeout
        self.max_active = max_active
        self.cancel_wait = cancel_wait

    async def load(self, user_id: str, job_id: UUID) -> tuple[JobState, int]:
        """Return one of the user's jobs and its revision, requeued if its worker is gone."""
        found = await self.bus.get_job(job_id)
        if found is None or found[0].user_id != user_id:
            raise NotFound("no such job")
        return await self.reconcile(*found)

    async def reconcile(self, state: JobState, revision: int) -> tuple[JobState, int]:
        """Put a running job whose lease ran out back to queued; its message is redelivered."""
        for _ in range(CAS_ROUNDS):
            if not lease_expired(state):
                return state, revision
            requeued = state.model_copy(update={"status": "queued", "lease_expires_at": None})
            written = await self.bus.update_job(requeued, revision)
            if written is not None:
                log.info("requeued a job whose lease ran out", job_id=str(state.id))
                return requeued, written
            found = await self.bus.get_job(state.id)
            if found is None:
                raise NotFound("no such job")
            state, revision = found
        return state, revision

    async def is_finished(self, job_id: UUID) -> bool:
        """Tell whether a lane entry is stale: its job ended or is gone."""
        found = await self.bus.get_job(job_id)
        return found is None or found[0].finished

    async def admit(
        self, job: JobState, revision: int, multitask: Multitask, meta: RequestMeta
    ) -> None:
        """Put a new job into its user's and its session's lanes, or refuse it and discard it."""
        try:
            await self._join_user_lane(job)
        except TooManyJobs:
            await self.discard(job, revision)
            raise
        except BusError as exc:
            await self.fail(job, revision, exc)
            raise BusUnavailable(f"could not queue the job: {exc}") from exc
        try:
            await self._join_session_lane(job, multitask, meta)
        except Conflict:
            await self.release(job)
            await self.discard(job, revision)
            raise
        except BusError as exc:
            await self.fail(job, revision, exc)
            await self.release(job)
            raise BusUnavailable(f"could not queue the job: {exc}") from exc

    async def release(self, job: JobState) -> None:
        """Remove a job from both its lanes, best effort: readers prune what is left."""
        for key in (subjects.session_lane(job.session_id), subjects.user_lane(job.user_id)):
            try:
                await self.bus.remove_from_lane(key, job.id)
            except BusError as exc:
                log.warning("could not leave the lane", job_id=str(job.id), error=str(exc))

    async def fail(self, job: JobState, revision: int, exc: Exception) -> None:
        """Mark a job that could not be queued as failed, unless someone moved it on already."""
        code: ErrorCode = "internal"
        if isinstance(exc, GatewayError):
            code = exc.code
        elif isinstance(exc, BusUnavailable | BusTimeout):
            code = "unavailable"
        failed = job.model_copy(
            update={
                "status": "failed",
                "error": JobError(code=code, message=f"could not queue the job: {exc}"[:2000]),
                "finished_at": utcnow(),
            }
        )
        try:
            await self.bus.update_job(failed, revision)
        except BusError as err:
            log.warning("could not mark the job failed", job_id=str(job.id), error=str(err))

    async def cancel(self, user_id: str, job_id: UUID, meta: RequestMeta) -> JobState:
        """Cancel one of the user's unfinished jobs; wait briefly for a running one to stop."""
        state, revision = await self.load(user_id, job_id)
        if state.finished:
            raise Conflict(f"the job already ended: {state.status}")
        return await self._stop(state, revision, meta, self.cancel_wait)

    async def cancel_session(self, user_id: str, session_id: UUID, meta: RequestMeta) -> int:
        """Cancel the session's unfinished jobs without waiting; return how many were."""
        lane = await self.bus.prune_lane(subjects.session_lane(session_id), self.is_finished)
        stopped = 0
        for job_id in lane.jobs:
            try:
                stopped += await self._interrupt(job_id, user_id, meta)
            except NotFound:  # the job was deleted meanwhile: nothing left to stop
                continue
        return stopped

    async def _join_user_lane(self, job: JobState) -> None:
        key = subjects.user_lane(job.user_id)
        try:
            await self.bus.append_to_lane(key, job.id, self.max_active)
            return
        except LaneFull:
            await self.bus.prune_lane(key, self.is_finished)
        try:
            await self.bus.append_to_lane(key, job.id, self.max_active)
        except LaneFull as exc:
            raise TooManyJobs(
                f"{self.max_active} jobs are already queued or running; retry later"
            ) from exc

    async def _join_session_lane(
        self, job: JobState, multitask: Multitask, meta: RequestMeta
    ) -> None:
        key = subjects.session_lane(job.session_id)
        if multitask == "enqueue":
            await self.bus.append_to_lane(key, job.id)
            return
        lane = await self.bus.prune_lane(key, self.is_finished)
        if multitask == "interrupt":
            for other in lane.jobs:
                await self._interrupt(other, job.user_id, meta)
            await self.bus.append_to_lane(key, job.id)
            return

        def join_if_idle(current: JobLane) -> JobLane:
            if current.jobs:
                raise Conflict("the session has a job queued or running (multitask=reject)")
            return JobLane(jobs=(job.id,))

        await self.bus.change_lane(key, join_if_idle)

    async def _interrupt(self, job_id: UUID, user_id: str, meta: RequestMeta) -> bool:
        found = await self.bus.get_job(job_id)
        if found is None or found[0].user_id != user_id:
            return False
        state, revision = await self.reconcile(*found)
        if state.finished:
            return False
        await self._stop(state, revision, meta, wait=0)
        return True

    async def _stop(
        self, state: JobState, revision: int, meta: RequestMeta, wait: float
    ) -> JobState:
        """Cancel a queued job here; ask the agent running one to stop, then wait up to ``wait``."""
        for _ in range(CAS_ROUNDS):
            if state.finished:
                return state
            if state.status == "queued":
                ended = {"status": "cancelled", "finished_at": utcnow(), "lease_expires_at": None}
                cancelled = state.model_copy(update=ended)
                if await self.bus.update_job(cancelled, revision) is not None:
                    await self.release(cancelled)
                    return cancelled
            elif state.cancel_requested:
                break
            else:
                flagged = state.model_copy(update={"cancel_requested": True})
                if await self.bus.update_job(flagged, revision) is not None:
                    state = flagged
                    break
            # Lost a race (the agent started it, heartbeated, or ended it): look again.
            found = await self.bus.get_job(state.id)
            if found is None:
                raise NotFound("no such job")
            state, revision = await self.reconcile(*found)
        else:
            raise Unavailable("the job kept changing; retry the cancel")
        command = CancelJob(job_id=state.id, user_id=state.user_id)
        await self.bus.publish(subjects.CHAT_CANCEL, command, meta, timeout=self.timeout)
        log.info("asked the agents to cancel a running job", job_id=str(state.id))
        if wait <= 0:
            return state
        latest = await self.bus.watch_job(state.id, wait)
        return latest or state

    async def discard(self, job: JobState, revision: int) -> None:
        """Delete a job that was refused before anything else saw it, so its key can be reused."""
        try:
            await self.bus.delete_job(job.id, revision)
        except BusError as exc:
            log.warning("could not discard a refused job", job_id=str(job.id), error=str(exc))
