"""Rules of chat jobs the gateway enforces: ownership, cancel requests (no HTTP here).

The gateway creates a job and from then on only reads it: a cancel is a request
of its own (the cancel bucket), which the agent holding the job, or the next one
to take it, carries out.
"""

from uuid import UUID

import structlog

from contracts.base import utcnow
from contracts.chat import CancelRequest, JobState
from services.gateway.bus import GatewayBus
from services.gateway.errors import Conflict, NotFound

log = structlog.get_logger("chatbus.gateway.jobs")


class Jobs:
    """Read the caller's jobs and ask for them to stop."""

    def __init__(self, bus: GatewayBus, *, cancel_wait: float) -> None:
        self.bus = bus
        self.cancel_wait = cancel_wait

    async def load(self, user_id: str, job_id: UUID) -> JobState:
        """Return one of the user's jobs (404 for another user's, as for a missing one)."""
        found = await self.bus.get_job(job_id)
        if found is None or found.user_id != user_id:
            raise NotFound("no such job")
        return found

    async def cancel(self, user_id: str, job_id: UUID) -> JobState:
        """Ask to stop one of the user's unfinished jobs; wait briefly for it to end."""
        state = await self.load(user_id, job_id)
        if state.finished:
            raise Conflict(f"the job already ended: {state.status}")
        await self.request_cancel(user_id, [job_id])
        return await self.bus.wait_job(job_id, self.cancel_wait) or state

    async def request_cancel(self, user_id: str, job_ids: list[UUID]) -> None:
        """Ask the agents to stop these jobs of the user (no wait)."""
        now = utcnow()
        for job_id in job_ids:
            await self.bus.request_cancel(
                CancelRequest(job_id=job_id, user_id=user_id, requested_at=now)
            )
            log.info("asked the agents to cancel a job", job_id=str(job_id))
