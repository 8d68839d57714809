"""Memories: the long-term facts the memory service drew from archived sessions; list, delete."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response

from contracts.history import MAX_PAGE, PERSONA_PATTERN
from services.gateway.deps import CallerDep, ServiceDep
from services.gateway.schemas import MemoryRead, Page, problems

router = APIRouter(prefix="/api/memories", tags=["memories"])
MAX_QUERY = 500


@router.get("", response_model=Page[MemoryRead], responses=problems(401, 422, 500, 503, 504))
async def list_memories(
    caller: CallerDep,
    service: ServiceDep,
    persona: Annotated[str | None, Query(pattern=PERSONA_PATTERN)] = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_QUERY,
            description="keep memories whose content contains this text, ignoring case",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[MemoryRead]:
    """List the caller's memories, newest first, by persona and text."""
    page = await service.recall_memories(caller, persona, q, limit, cursor)
    return Page(items=[MemoryRead.of(m) for m in page.items], next_cursor=page.next_cursor)


@router.delete(
    "/{memory_id}",
    status_code=204,
    response_class=Response,
    responses=problems(401, 404, 422, 500, 503, 504),
)
async def delete_memory(caller: CallerDep, service: ServiceDep, memory_id: UUID) -> Response:
    """Delete one of the caller's memories."""
    await service.delete_memory(caller, memory_id)
    return Response(status_code=204)
