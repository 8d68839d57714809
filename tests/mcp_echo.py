"""An MCP server for tests, written with the SDK's own server side (``MCPServer``).

Run as ``python tests/mcp_echo.py stdio`` or ``python tests/mcp_echo.py http PORT``
(streamable HTTP on ``http://127.0.0.1:PORT/mcp``). With ``MCP_ECHO_PIDFILE`` set, it
writes its process id there once it serves (tests kill it mid-call).
"""

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("echo")


@server.tool()
async def whoami(note: str, ctx: Context) -> str:
    """Say which user the caller said it acts for, and echo a note."""
    meta = ctx.request_context.meta or {}
    return f"user={meta.get('chatbus/user_id')} note={note}"


@server.tool()
async def slow(seconds: float) -> str:
    """Wait some seconds, then answer."""
    await anyio.sleep(seconds)
    return f"waited {seconds:g} s"


@server.tool()
async def big(chars: int) -> str:
    """Answer a long text of this many characters."""
    return "x" * chars


def main() -> None:
    if pidfile := os.environ.get("MCP_ECHO_PIDFILE"):
        with open(pidfile, "w") as out:
            out.write(str(os.getpid()))
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()


if __name__ == "__main__":
    main()
