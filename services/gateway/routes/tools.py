"""Tools: what the model can call now, built-in and from MCP servers."""

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.deps import CallerDep, ServiceDep
from services.gateway.schemas import problems

router = APIRouter(prefix="/api/tools", tags=["tools"])


class ToolRead(BaseModel):
    """One tool the model can call."""

    name: str = Field(description="as the model calls it; an MCP tool is `<server>__<tool>`")
    description: str
    parameters: dict[str, Any] = Field(description="JSON schema of the arguments")
    source: Literal["builtin", "mcp"]
    server: str | None = Field(description="the MCP server, for an MCP tool")
    requires_approval: bool


class ToolPage(BaseModel):
    """Every tool, in one page."""

    items: list[ToolRead]
    next_cursor: str | None = None


@router.get("", response_model=ToolPage, responses=problems(401, 500, 503, 504))
async def list_tools(caller: CallerDep, service: ServiceDep) -> ToolPage:
    """List the tools the model can call now; an unreachable MCP server's are left out."""
    found = await service.list_tools(caller)
    items = [ToolRead.model_validate(t.model_dump(exclude={"schema_version"})) for t in found.items]
    return ToolPage(items=items)
