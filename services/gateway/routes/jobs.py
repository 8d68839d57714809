"""Jobs: read the state of a chat job, follow it as server-sent events, cancel it."""

from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent

from contracts.chat import JobState
from services.gateway.deps import CallerDep, ServiceDep
from services.gateway.events import JobEvent
from services.gateway.schemas import JobRead, problems

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
READ_ERRORS = problems(401, 404, 422, 500, 503, 504)

EVENTS_DOC = """Follow a job as `text/event-stream`.

Events: `status` (data: Job) when what the client sees of the job changes (a new
attempt shows as `attempts` growing: the reply starts again), `delta` (data:
`{"text": "..."}`) for each piece of the reply as the model writes it, `tool_call`
(data: `{"call_id", "name", "arguments"}`) and `tool_result` (data: `{"call_id",
"name", "result", "truncated"}`, the result cut to 2,000 characters) in order among
the deltas, then exactly one of `completed`, `failed`, `cancelled` (data: Job), after
which the stream ends.

Every event is stored (deltas and tool events for `JOB_EVENTS_MAX_AGE`, 1 h by
default) and its id is its position in the job's event stream. Without
`Last-Event-ID` the stream starts with the job's current state (id `0`) and then
replays the current attempt's events from its start, so a late client gets the
whole text so far; a stream opened after the job ended sends the final event at
once. With `Last-Event-ID`, from any gateway replica, it replays exactly the
events after that one, in order, nothing repeated. A `: ping` comment is sent
every 15 s of silence."""


async def owned_job(caller: CallerDep, service: ServiceDep, job_id: UUID) -> JobState:
    """Return the caller's job, or answer 404 before any event is sent."""
    return await service.get_job(caller, job_id)


@router.get("/{job_id}", response_model=JobRead, responses=READ_ERRORS)
async def get_job(job: Annotated[JobState, Depends(owned_job)]) -> JobRead:
    """Return one of the caller's jobs."""
    return JobRead.of(job)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses=READ_ERRORS,
    description=EVENTS_DOC,
)
async def job_events(
    job: Annotated[JobState, Depends(owned_job)],
    service: ServiceDep,
    last_event_id: Annotated[
        str | None,
        Header(max_length=64, description="id of the last event received, to resume"),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Stream the job's status, its reply as it is written, and its end."""
    async for event in service.job_events(job, last_event_id):
        yield _sse(event)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobRead,
    responses=problems(401, 404, 409, 422, 500, 503, 504),
)
async def cancel_job(caller: CallerDep, service: ServiceDep, job_id: UUID) -> JobRead:
    """Cancel a queued or running job; answer its state after a short wait for it to stop."""
    return JobRead.of(await service.cancel_job(caller, job_id))


def _sse(event: JobEvent) -> ServerSentEvent:
    if event.job is not None:
        return ServerSentEvent(event=event.name, id=event.id, data=JobRead.of(event.job))
    return ServerSentEvent(event=event.name, id=event.id, data=event.data)
