"""Messages of a session: post one (it becomes a chat job), list them."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Query, Response

from contracts.history import MAX_PAGE, Multitask
from services.gateway.deps import CallerDep, ServiceDep, SettingsDep
from services.gateway.schemas import JobRead, MessageCreate, MessageRead, Page, problems

router = APIRouter(prefix="/api/sessions/{session_id}/messages", tags=["messages"])
MAX_WAIT = 60


@router.post(
    "",
    status_code=202,
    response_model=JobRead,
    responses={
        200: {"model": JobRead, "description": "the job ended within `wait` seconds"},
        **problems(400, 401, 404, 409, 413, 422, 429, 500, 503, 504),
    },
)
async def post_message(
    caller: CallerDep,
    service: ServiceDep,
    settings: SettingsDep,
    session_id: UUID,
    body: MessageCreate,
    response: Response,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT, description="seconds to hold the answer until the job ends")
    ] = 0,
    multitask: Annotated[
        Multitask,
        Query(
            description="what to do when the session already has a job queued or running: "
            "`enqueue` (default) queues this one after it (answered in order); `reject` "
            "answers 409 and queues nothing; `interrupt` cancels the session's unfinished "
            "jobs (a running one is aborted) and queues this one"
        ),
    ] = "enqueue",
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=255, description="same key, same job, for 24 h"),
    ] = None,
) -> JobRead:
    """Queue a chat job answering the message; 202 at once, or 200 if it ended within ``wait``."""
    submission = await service.submit_message(
        caller, session_id, body.content, idempotency_key, multitask
    )
    job = await service.wait_for(submission.job, min(wait, settings.max_wait_seconds))
    response.status_code = 200 if job.finished else 202
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return JobRead.of(job)


@router.get("", response_model=Page[MessageRead], responses=problems(401, 404, 422, 500, 503, 504))
async def list_messages(
    caller: CallerDep,
    service: ServiceDep,
    session_id: UUID,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[MessageRead]:
    """List a session's messages, newest first."""
    page = await service.list_messages(caller, session_id, limit, cursor)
    return Page(items=[MessageRead.of(m) for m in page.items], next_cursor=page.next_cursor)
