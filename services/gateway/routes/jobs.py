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

Events: `status` (data: Job) whenever what the client sees of the job changes (a retry
shows as `attempts` growing), `delta` (data: `{"text": "..."}`) for each piece of the
reply as the model writes it, then exactly one of `completed`, `failed`, `cancelled`
(data: Job), after which the stream ends. The stream always starts with the current
state; a stream opened after the job ended sends only the final event.

Event ids: `s<revision>` on status and final events (the job's revision in the job
bucket), `d<attempt>.<seq>` on deltas. Reconnect with `Last-Event-ID` to resume: the
current status (or the final event) comes first, and no delta already sent is repeated.
Deltas published while no stream was open are not replayed: the final Job carries
the whole reply. A `: ping` comment is sent every 15 s of silence."""


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
    async for event in service.job_events(job.id, last_event_id):
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
    return ServerSentEvent(event=event.name, id=event.id, data={"text": event.text})
