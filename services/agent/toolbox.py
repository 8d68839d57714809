"""Every tool the model may call: the built-in ones, then those of each connected MCP server.

An MCP tool is offered as ``<server>__<tool>`` (OpenAI tool names are
``[A-Za-z0-9_-]{1,64}``; a tool whose name does not fit is left out with a
warning). Its description and JSON schema are the server's. The same rules as
for built-in tools hold: the user comes from the job (:class:`ToolContext`,
sent as the call's ``_meta``), every failure comes back as text for the model,
and a result is cut to ``AGENT_MCP_RESULT_CHARS`` characters, ending with
:data:`TRUNCATED` when cut.
"""

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from mcp_types import CallToolResult, TextContent, Tool

from contracts.tools import ToolInfo
from services.agent.mcp import PERSONA_META, REQUEST_META, USER_META, McpCallError, McpServer
from services.agent.tools import ToolContext, ToolRegistry

log = structlog.get_logger("chatbus.agent.tools")
SEPARATOR = "__"
TRUNCATED = " …[truncated]"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Toolbox:
    """The built-in registry and the MCP servers, behind the registry's interface."""

    def __init__(
        self, builtin: ToolRegistry, servers: Sequence[McpServer], result_chars: int = 4000
    ) -> None:
        self.builtin = builtin
        self.servers = {server.name: server for server in servers}
        self.result_chars = result_chars
        # Specs of each server's tools, built once per connection (keyed by its tool list).
        self._specs: dict[str, tuple[tuple[Tool, ...], list[Mapping[str, Any]]]] = {}

    def __bool__(self) -> bool:
        return bool(self.builtin) or any(server.tools for server in self.servers.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.builtin or self._find(name) is not None)

    def specs(self) -> list[Mapping[str, Any]]:
        """Return the ``tools`` parameter: built-in tools, then each connected server's."""
        specs = self.builtin.specs()
        for server in self.servers.values():
            specs.extend(self._server_specs(server))
        return specs

    def describe(self) -> list[ToolInfo]:
        """Describe every tool the model can call now (``GET /api/tools``)."""
        found = [
            ToolInfo(
                name=tool.name, description=tool.description,
                parameters=tool.args.model_json_schema(), source="builtin",
            )
            for tool in self.builtin.tools.values()
        ]
        for server in self.servers.values():
            for spec in self._server_specs(server):
                function = spec["function"]
                found.append(ToolInfo(
                    name=function["name"], description=function["description"],
                    parameters=function["parameters"], source="mcp", server=server.name,
                    requires_approval=server.config.requires_approval,
                ))
        return found

    async def call(self, name: str, arguments: str, ctx: ToolContext) -> str:
        """Run a tool the model called; every failure comes back as text for the model."""
        if name in self.builtin:
            return await self.builtin.call(name, arguments, ctx)
        found = self._find(name)
        if found is None:
            known = ", ".join(sorted(self.names())) or "none"
            return f"error: there is no tool named {name!r} (available: {known})"
        server, tool = found
        try:
            args = json.loads(arguments or "{}")
        except ValueError as exc:
            return f"error: invalid arguments for {name}: not JSON ({exc})"
        if not isinstance(args, dict):
            return f"error: invalid arguments for {name}: a JSON object is expected"
        meta = {USER_META: ctx.user_id, REQUEST_META: ctx.meta.request_id,
                PERSONA_META: ctx.persona}
        try:
            result = await server.call(tool, args, meta)
        except McpCallError as exc:
            log.warning("MCP tool failed", tool=name, error=str(exc))
            return self._cut(f"error: {name} failed: {exc}")
        return self._cut(self._text(name, result))

    def names(self) -> list[str]:
        """Return the names of every tool offered now."""
        return [spec["function"]["name"] for spec in self.specs()]

    def _find(self, name: str) -> tuple[McpServer, str] | None:
        server_name, sep, tool = name.partition(SEPARATOR)
        server = self.servers.get(server_name)
        if not sep or server is None or not any(t.name == tool for t in server.tools):
            return None
        return server, tool

    def _server_specs(self, server: McpServer) -> list[Mapping[str, Any]]:
        tools = server.tools
        cached = self._specs.get(server.name)
        if cached is not None and cached[0] is tools:
            return list(cached[1])
        specs: list[Mapping[str, Any]] = []
        for tool in tools:
            name = f"{server.name}{SEPARATOR}{tool.name}"
            if not _NAME.match(name):
                log.warning("MCP tool left out: its name cannot be offered", tool=name[:100])
                continue
            specs.append({"type": "function", "function": {
                "name": name,
                "description": tool.description or tool.title or tool.name,
                "parameters": tool.input_schema or {"type": "object", "properties": {}},
            }})
        self._specs[server.name] = (tools, specs)
        return list(specs)

    @staticmethod
    def _text(name: str, result: CallToolResult) -> str:
        parts = [
            block.text if isinstance(block, TextContent) else f"[{block.type} content left out]"
            for block in result.content
        ]
        if not parts and result.structured_content is not None:
            parts.append(json.dumps(result.structured_content))
        text = "\n".join(parts) or "(no content)"
        return f"error: {name} failed: {text}" if result.is_error else text

    def _cut(self, text: str) -> str:
        if len(text) <= self.result_chars:
            return text
        return text[: self.result_chars - len(TRUNCATED)] + TRUNCATED
