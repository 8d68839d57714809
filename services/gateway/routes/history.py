"""The caller's history: every message of every session, newest first (the dashboard feed)."""

from typing import Annotated

from fastapi import APIRouter, Query

from contracts.history import MAX_PAGE
from services.gateway.deps import CallerDep, ServiceDep
from services.gateway.schemas import MessageRead, Page, problems

router = APIRouter(prefix="/api/history", tags=["history"])


@router.get("", response_model=Page[MessageRead], responses=problems(401, 422, 500, 503, 504))
async def list_history(
    caller: CallerDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[MessageRead]:
    """List the caller's messages across all sessions, newest first."""
    page = await service.list_feed(caller, limit, cursor)
    return Page(items=[MessageRead.of(m) for m in page.items], next_cursor=page.next_cursor)
