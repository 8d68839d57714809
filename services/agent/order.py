"""Per-session order: a job runs only when it is the oldest unfinished job of its session."""

import asyncio
import time
from uuid import UUID

import structlog

from contracts import subjects
from contracts.chat import JobState, RequestChat
from services.agent.config import Settings
from services.agent.errors import JobStoreError
from services.agent.ports import Delivery, JobStore, LaneStore
from services.runtime.lanes import LaneError

log = structlog.get_logger("chatbus.agent")


class SessionOrder:
    """Wait for a job's turn in its session lane, and take finished jobs out of the lanes."""

    def __init__(self, settings: Settings, lanes: LaneStore, jobs: JobStore) -> None:
        self.settings = settings
        self.lanes = lanes
        self.jobs = jobs

    async def is_finished(self, job_id: UUID) -> bool:
        """Tell whether a lane entry is stale: its job ended or has no state at all."""
        found = await self.jobs.get(job_id)
        return found is None or found.state.finished

    async def wait_turn(self, request: RequestChat, delivery: Delivery) -> bool:
        """Hold the delivery until the job heads its session lane; False when the wait ran out."""
        key = subjects.session_lane(request.session_id)
        now = time.monotonic()
        deadline = now + self.settings.agent_order_wait
        next_beat = now + self.settings.heartbeat_interval

        async def stale(job_id: UUID) -> bool:
            return job_id != request.job_id and await self.is_finished(job_id)

        while True:
            try:
                lane = await self.lanes.prune(key, stale)
            except LaneError as exc:
                raise JobStoreError(f"session lane unavailable: {exc}") from exc
            if request.job_id not in lane.jobs:
                log.info("job is not in its session lane; run without waiting")
                return True
            head = lane.jobs[0]
            if head == request.job_id:
                return True
            now = time.monotonic()
            if now >= deadline:
                log.info("an earlier job of the session is unfinished; retried", head=str(head))
                return False
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_interval
                try:
                    await delivery.in_progress()
                except Exception as exc:
                    log.warning("heartbeat failed while waiting for the turn", error=repr(exc))
            await asyncio.sleep(min(self.settings.agent_order_poll, deadline - now))

    async def leave(self, state: JobState) -> None:
        """Take a finished job out of its session and user lanes (no-op when absent)."""
        for key in (subjects.session_lane(state.session_id), subjects.user_lane(state.user_id)):
            try:
                await self.lanes.remove(key, state.id)
            except (LaneError, JobStoreError) as exc:
                # Harmless: readers prune entries whose job has ended.
                log.warning("finished job left in its lane", lane=key, error=str(exc))
