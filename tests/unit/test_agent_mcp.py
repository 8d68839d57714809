"""An MCP server that never answers: logged once, retried with backoff, its tools left out."""

import asyncio

from structlog.testing import capture_logs

from services.agent.config import McpServerSettings, Settings
from services.agent.mcp import McpServer, McpServerDown
from services.agent.toolbox import Toolbox
from services.agent.tools import ToolRegistry


async def test_an_unreachable_server_is_logged_once_and_retried() -> None:
    settings = Settings(
        openai_base_url="http://127.0.0.1:1/v1", agent_mcp_retry_initial=0.05,
        agent_mcp_retry_max=0.1,
    )
    server = McpServer(McpServerSettings(name="gone", command="/nonexistent/server"), settings)
    attempts = 0
    serve = server._serve

    async def counted() -> None:
        nonlocal attempts
        attempts += 1
        await serve()

    server._serve = counted  # type: ignore[method-assign]
    with capture_logs() as logs:
        server.start()
        await asyncio.sleep(0.6)
        await server.stop()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["server"] == "gone"
    assert "FileNotFoundError" in warnings[0]["error"]
    assert attempts >= 4  # kept trying, backing off up to AGENT_MCP_RETRY_MAX
    assert server.tools == () and not server.connected
    try:
        await server.call("whoami", {}, {})
    except McpServerDown as exc:
        assert "not connected" in str(exc)
    toolbox = Toolbox(ToolRegistry(), [server])
    assert not toolbox and toolbox.specs() == [] and "gone__whoami" not in toolbox
