"""MCP tool servers: one long-lived connection each, through the official ``mcp`` SDK.

Each server of ``AGENT_MCP_SERVERS`` gets a task that connects (stdio: runs the
command; otherwise streamable HTTP), lists the server's tools and holds the
session, pinging it every ``AGENT_MCP_PING_INTERVAL`` seconds. While it is not
connected its tools are not offered, so a job that does not use it never
notices. A failure is logged once, as a warning, until the server is back; the
connection is retried with exponential backoff and jitter, from
``AGENT_MCP_RETRY_INITIAL`` up to ``AGENT_MCP_RETRY_MAX`` seconds.

A call carries the job's user id (and request id, persona) in the request's
``_meta`` (:data:`USER_META`), set here from the job, never from the model's
arguments; it is bounded by ``AGENT_MCP_CALL_TIMEOUT``.

Errors of a call, all shown to the model as the tool's result::

    McpCallError      the call failed: the tool said so, timed out, or was refused
     └── McpServerDown  the server is not connected, or the connection broke mid-call
"""

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import structlog
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, RequestParamsMeta, Tool
from mcp_types.jsonrpc import CONNECTION_CLOSED

from services.agent.config import McpServerSettings, Settings

log = structlog.get_logger("chatbus.agent.mcp")
USER_META = "chatbus/user_id"
REQUEST_META = "chatbus/request_id"
PERSONA_META = "chatbus/persona"
Streams = tuple[Any, Any]


class McpCallError(Exception):
    """A tool call of an MCP server failed; the message is shown to the model."""


class McpServerDown(McpCallError):
    """The server is not connected, or the connection broke during the call."""


class McpServer:
    """One configured MCP server: its connection, its tools while connected, and calls."""

    def __init__(self, config: McpServerSettings, settings: Settings) -> None:
        self.config = config
        self.name = config.name
        self.settings = settings
        self.tools: tuple[Tool, ...] = ()  # empty while not connected
        self._session: ClientSession | None = None
        self._broken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down_logged = False

    @property
    def connected(self) -> bool:
        """Tell whether the server is connected now."""
        return self._session is not None

    def start(self) -> None:
        """Start connecting in the background; never raises, never waits."""
        self._task = asyncio.create_task(self._hold(), name=f"mcp-{self.name}")

    async def stop(self) -> None:
        """Close the connection (a stdio server's process ends with it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def call(
        self, tool: str, arguments: dict[str, Any], meta: Mapping[str, Any]
    ) -> CallToolResult:
        """Call one tool of the server with the job's metadata; raise :class:`McpCallError`."""
        session = self._session
        if session is None:
            raise McpServerDown(f"MCP server {self.name} is not connected")
        timeout = self.settings.agent_mcp_call_timeout
        try:
            async with asyncio.timeout(timeout):
                return await session.call_tool(
                    tool, arguments, meta=cast(RequestParamsMeta, dict(meta))
                )
        except TimeoutError as exc:
            raise McpCallError(f"timed out after {timeout:g} s") from exc
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self._broken.set()
                raise McpServerDown(
                    f"MCP server {self.name} went away during the call ({exc.message})"
                ) from exc
            raise McpCallError(f"the server refused the call: {exc.message}") from exc
        except Exception as exc:  # a transport failure: the session is of no more use
            self._broken.set()
            raise McpServerDown(
                f"MCP server {self.name} went away during the call ({describe(exc)})"
            ) from exc

    async def _hold(self) -> None:
        """Connect, serve until the connection breaks, and again after a backoff, for ever."""
        delay = self.settings.agent_mcp_retry_initial
        while True:
            try:
                await self._serve()
                delay = self.settings.agent_mcp_retry_initial  # it was up: retry soon
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._went_down(exc, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.settings.agent_mcp_retry_max)

    async def _serve(self) -> None:
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport())
            session = await stack.enter_async_context(ClientSession(read, write))
            async with asyncio.timeout(self.settings.agent_mcp_connect_timeout):
                await session.initialize()
                tools = await self._list_tools(session)
            self._broken.clear()
            self.tools, self._session = tools, session
            log.info(
                "MCP server connected", server=self.name, tools=[t.name for t in tools],
                after_failures=self._down_logged,
            )
            self._down_logged = False
            try:
                await self._watch(session)
            finally:
                self.tools, self._session = (), None
            log.warning("MCP server connection lost; reconnecting", server=self.name)
            self._down_logged = True

    async def _watch(self, session: ClientSession) -> None:
        """Return when the connection is found broken: by a call, or by a failed ping."""
        interval = self.settings.agent_mcp_ping_interval
        while True:
            try:
                await asyncio.wait_for(self._broken.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                async with asyncio.timeout(self.settings.agent_mcp_connect_timeout):
                    await session.send_ping()
            except asyncio.CancelledError:
                raise
            except Exception:
                return

    @staticmethod
    async def _list_tools(session: ClientSession) -> tuple[Tool, ...]:
        found: list[Tool] = []
        cursor: str | None = None
        while True:
            params = {"cursor": cursor} if cursor else None
            page = await session.list_tools(params=params)  # type: ignore[arg-type]
            found.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tuple(found)

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[Streams]:
        config = self.config
        if config.command is not None:
            params = StdioServerParameters(
                command=config.command, args=list(config.args), env=config.env or None
            )
            async with stdio_client(params) as streams:
                yield streams[0], streams[1]
            return
        assert config.url is not None
        async with (
            create_mcp_http_client(headers=config.headers or None) as http,
            streamable_http_client(config.url, http_client=http) as streams,
        ):
            yield streams[0], streams[1]

    def _went_down(self, exc: BaseException, retry_in: float) -> None:
        if self._down_logged:
            log.debug("MCP server still unreachable", server=self.name, error=describe(exc))
            return
        self._down_logged = True
        log.warning(
            "MCP server unreachable; its tools are left out until it answers",
            server=self.name, error=describe(exc), retry_in=round(retry_in, 1),
        )


def describe(exc: BaseException) -> str:
    """Name an error, looking inside the exception groups anyio raises."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]
