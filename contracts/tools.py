"""The tools the model may call, as the agent describes them to the gateway."""

from typing import Any, Literal

from pydantic import Field

from contracts.base import Contract, Reply


class ListTools(Contract):
    """Ask an agent replica which tools the model can call now."""

    user_id: str = Field(min_length=1, max_length=256)


class ToolInfo(Contract):
    """One tool offered to the model: its name, what it does, the arguments it takes."""

    name: str
    description: str
    parameters: dict[str, Any] = Field(description="JSON schema of the arguments")
    source: Literal["builtin", "mcp"]
    server: str | None = Field(default=None, description="the MCP server, for an MCP tool")
    requires_approval: bool = False


class ToolList(Reply):
    """The tools the model can call, built-in ones first, then each MCP server's."""

    items: tuple[ToolInfo, ...] = ()
