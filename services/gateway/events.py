"""The event stream of one job: its status, its reply as the model writes it, and its end.

Event ids, which clients send back as ``Last-Event-ID`` when they reconnect:

- ``s<revision>`` on ``status`` and final events: the job-bucket revision of the state;
- ``d<attempt>.<seq>`` on ``delta`` events: the attempt the piece belongs to and its
  ``seq`` within that attempt (``seq`` restarts at 0 on every attempt).

A stream always starts with the job's current state: a ``status`` event, or the
final event at once when the job has ended. Deltas are live (core NATS, never
stored), so a resumed stream never repeats one; ``d<attempt>.<seq>`` carries the
attempt numbering over. A ``status`` event follows every change the client can
see, in particular a retry (``attempts`` grows, deltas restart at seq 0).
"""

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import structlog

from contracts.base import utcnow
from contracts.chat import ChatDelta, JobState
from services.gateway.jobs import Jobs, lease_expired
from services.gateway.schemas import JobRead
from services.runtime.bus import BusError

EventName = Literal["status", "delta", "completed", "failed", "cancelled"]
FINAL_EVENTS: dict[str, EventName] = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}
RESYNC_SECONDS = 15.0
_DELTA_ID = re.compile(r"d(\d{1,9})\.(\d{1,12})")
log = structlog.get_logger("chatbus.gateway.events")


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event: a job state (status and final events) or a piece of text."""

    name: EventName
    id: str
    job: JobState | None = None
    text: str | None = None


class JobEvents:
    """Turn a job's feed into events, resuming after ``last_event_id`` when given."""

    def __init__(
        self, jobs: Jobs, job_id: UUID, last_event_id: str | None, resync: float = RESYNC_SECONDS
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.resync = resync
        self.attempt, self.seq = 0, -1
        if last_event_id and (found := _DELTA_ID.fullmatch(last_event_id)):
            self.attempt, self.seq = int(found[1]), int(found[2])
        self.sent_revision: int | None = None
        self.sent_view: JobRead | None = None
        self.latest: JobState | None = None
        self.done = False

    async def stream(self) -> AsyncIterator[JobEvent]:
        """Yield events until the final one; end quietly if the bus goes away."""
        try:
            async with self.jobs.bus.follow_job(self.job_id) as feed:
                early: list[ChatDelta] = []
                while not self.done:
                    item = await feed.next(self._patience())
                    if item is None:
                        # No news for a while: look at the bucket (lease ran out? missed write?).
                        item = await self.jobs.bus.get_job(self.job_id)
                        if item is None:
                            return
                    if isinstance(item, ChatDelta):
                        if self.sent_revision is None:
                            early.append(item)  # the current state goes out first
                            continue
                        for event in await self._delta(item):
                            yield event
                        continue
                    if (status := await self._state(*item)) is not None:
                        yield status
                    while early and not self.done:
                        for event in await self._delta(early.pop(0)):
                            yield event
        except BusError as exc:
            # Past the headers no status can be sent: end; the client reconnects and resumes.
            log.warning("job event stream cut short", job_id=str(self.job_id), error=str(exc))

    async def _state(self, state: JobState, revision: int) -> JobEvent | None:
        if lease_expired(state):
            state, revision = await self.jobs.reconcile(state, revision)
        if self.sent_revision is not None and revision <= self.sent_revision:
            return None
        first = self.sent_revision is None
        self.sent_revision, self.latest = revision, state
        if state.attempts > self.attempt:
            self.attempt, self.seq = state.attempts, -1
        if state.finished:
            self.done = True
            return JobEvent(FINAL_EVENTS[state.status], f"s{revision}", job=state)
        view = JobRead.of(state)
        if not first and view == self.sent_view:
            return None  # only the lease or the cancel flag moved: nothing the client sees
        self.sent_view = view
        return JobEvent("status", f"s{revision}", job=state)

    async def _delta(self, delta: ChatDelta) -> list[JobEvent]:
        events: list[JobEvent] = []
        if self.attempt < 1 or delta.seq <= self.seq:
            # The attempt's state has not reached us yet, or seq restarted: a retry began.
            before = self.attempt
            found = await self.jobs.bus.get_job(self.job_id)
            if found is not None and (event := await self._state(*found)) is not None:
                events.append(event)
            if self.done:
                return events
            if self.attempt == before and delta.seq <= self.seq:
                self.attempt, self.seq = self.attempt + 1, -1
            self.attempt = max(self.attempt, 1)
        self.seq = delta.seq
        events.append(JobEvent("delta", f"d{self.attempt}.{delta.seq}", text=delta.text))
        return events

    def _patience(self) -> float:
        """Return how long to wait for news: until a running job's lease runs out, at most."""
        latest = self.latest
        if latest is None or latest.status != "running" or latest.lease_expires_at is None:
            return self.resync
        left = (latest.lease_expires_at - utcnow()).total_seconds() + 0.1
        return min(self.resync, max(0.1, left))
