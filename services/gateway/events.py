"""The event stream of one job, replayed from the JOB_EVENTS stream: ids are stream positions.

- Without ``Last-Event-ID``: the job's current state first (id ``0``; the final
  event at once when the job has ended), then the stored events of its current
  attempt from their start, then live ones. Events of earlier attempts are left
  out: the current state already says a new attempt began.
- With ``Last-Event-ID: <n>``: exactly the events stored after position ``n``, in
  order, from any gateway replica.

The stream ends after the final event. If the job's final state is in the bucket
but no final event arrives (its events expired, or its publish is still being
retried), the final state is sent from the bucket after a short wait.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from pydantic import ValidationError

from contracts.chat import ChatDelta, JobState, ToolCalled, ToolReturned
from services.gateway.bus import GatewayBus, StoredEvent
from services.gateway.schemas import JobRead
from services.runtime.meta import BusError

EventName = Literal[
    "status", "delta", "tool_call", "tool_result", "completed", "failed", "cancelled"
]
FINAL_EVENTS: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
RESYNC_SECONDS = 15.0
INTERNAL_FIELDS = {"job_id", "attempt", "schema_version"}  # not sent to clients
ENDED_PATIENCE = 1.0  # how long to wait for the final event of a job the bucket says ended
log = structlog.get_logger("chatbus.gateway.events")


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event: a job state (status and final events), or other data."""

    name: EventName
    id: str
    job: JobState | None = None
    data: dict[str, Any] = field(default_factory=dict)


def parse_event_id(last_event_id: str | None) -> int | None:
    """Return the stream position a client resumes after, or None for a fresh stream."""
    if last_event_id is None:
        return None
    text = last_event_id.strip()
    return int(text) if text.isdigit() and len(text) <= 18 else None


class JobEvents:
    """Turn a job's stored events into server-sent events."""

    def __init__(
        self, bus: GatewayBus, job: JobState, last_event_id: str | None,
        resync: float = RESYNC_SECONDS,
    ) -> None:
        self.bus = bus
        self.job = job
        self.after = parse_event_id(last_event_id)
        self.resync = resync
        self.attempt = job.attempts if self.after is None else 0
        self.last_id = str(self.after or 0)
        self.sent_view: JobRead | None = None

    async def stream(self) -> AsyncIterator[JobEvent]:
        """Yield events until the final one; end quietly if the bus goes away."""
        if self.after is None:
            yield self._state(self.job)
            if self.job.finished:
                return
        patience = ENDED_PATIENCE if self.job.finished else self.resync
        try:
            async with self.bus.follow_job(self.job.id, self.after or 0) as feed:
                while True:
                    stored = await feed.next(patience)
                    if stored is None:
                        latest = await self.bus.get_job(self.job.id)
                        if latest is None:
                            return
                        if latest.finished:
                            yield self._state(latest)
                            return
                        continue
                    event = self._event(stored)
                    if event is not None:
                        yield event
                        if event.name in FINAL_EVENTS:
                            return
        except BusError as exc:
            # Past the headers no status can be sent: end; the client reconnects and resumes.
            log.warning("job event stream cut short", job_id=str(self.job.id), error=str(exc))

    def _state(self, state: JobState) -> JobEvent:
        name: EventName = state.status if state.status in FINAL_EVENTS else "status"  # type: ignore[assignment]
        self.sent_view = JobRead.of(state)
        return JobEvent(name, self.last_id, job=state)

    def _event(self, stored: StoredEvent) -> JobEvent | None:
        """Decode a stored event; None for one of an earlier attempt or a repeat of a status."""
        self.last_id = str(stored.seq)
        try:
            if stored.kind == "status" or stored.kind in FINAL_EVENTS:
                state = JobState.model_validate_json(stored.data)
                if state.attempts < self.attempt:
                    return None
                view = JobRead.of(state)
                if stored.kind == "status" and view == self.sent_view:
                    return None
                return self._state(state)
            if stored.kind == "delta":
                delta = ChatDelta.model_validate_json(stored.data)
                if delta.attempt < self.attempt:
                    return None
                return JobEvent("delta", self.last_id, data={"text": delta.text})
            if stored.kind in ("tool_call", "tool_result"):
                model = ToolCalled if stored.kind == "tool_call" else ToolReturned
                tool = model.model_validate_json(stored.data)
                if tool.attempt < self.attempt:
                    return None
                data = json.loads(tool.model_dump_json(exclude=INTERNAL_FIELDS))
                return JobEvent(stored.kind, self.last_id, data=data)  # type: ignore[arg-type]
        except ValidationError:
            log.warning("skipped a malformed job event", job_id=str(self.job.id), kind=stored.kind)
            return None
        log.warning("skipped a job event of an unknown kind", kind=stored.kind)
        return None
