"""Sessions: create, list, read, archive, delete."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response

from contracts.history import MAX_PAGE, PERSONA_PATTERN, SessionStatus
from services.gateway.deps import CallerDep, ServiceDep
from services.gateway.schemas import Page, SessionCreate, SessionRead, problems

router = APIRouter(prefix="/api/sessions", tags=["sessions"])
READ_ERRORS = problems(401, 422, 500, 503, 504)
ONE_ERRORS = problems(401, 404, 422, 500, 503, 504)
BODY_ERRORS = problems(400, 401, 422, 500, 503, 504)


@router.post("", status_code=201, response_model=SessionRead, responses=BODY_ERRORS)
async def create_session(
    caller: CallerDep, service: ServiceDep, body: SessionCreate
) -> SessionRead:
    """Create a session; the previous active session of the persona is archived."""
    record = await service.create_session(caller, body.persona, body.title)
    return SessionRead.of(record)


@router.get("", response_model=Page[SessionRead], responses=READ_ERRORS)
async def list_sessions(
    caller: CallerDep,
    service: ServiceDep,
    status: SessionStatus | None = None,
    persona: Annotated[str | None, Query(pattern=PERSONA_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[SessionRead]:
    """List the caller's sessions, newest first."""
    page = await service.list_sessions(caller, status, persona, limit, cursor)
    return Page(items=[SessionRead.of(s) for s in page.items], next_cursor=page.next_cursor)


@router.get("/{session_id}", response_model=SessionRead, responses=ONE_ERRORS)
async def get_session(caller: CallerDep, service: ServiceDep, session_id: UUID) -> SessionRead:
    """Return one of the caller's sessions."""
    return SessionRead.of(await service.get_session(caller, session_id))


@router.post(
    "/{session_id}/archive", status_code=202, response_model=SessionRead, responses=ONE_ERRORS
)
async def archive_session(caller: CallerDep, service: ServiceDep, session_id: UUID) -> SessionRead:
    """Archive one of the caller's sessions and queue its memories; again is a no-op."""
    return SessionRead.of(await service.archive_session(caller, session_id))


@router.delete(
    "/{session_id}",
    status_code=204,
    response_class=Response,
    responses=ONE_ERRORS,
    description="Delete one of the caller's sessions with its messages and memories. Its "
    "unfinished jobs are cancelled first: queued ones never run, running ones are aborted.",
)
async def delete_session(caller: CallerDep, service: ServiceDep, session_id: UUID) -> Response:
    """Cancel the session's unfinished jobs, then delete it with its messages and memories."""
    await service.delete_session(caller, session_id)
    return Response(status_code=204)
