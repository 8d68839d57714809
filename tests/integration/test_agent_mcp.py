"""MCP tool servers on the real bus: the agent, the simulated model and a real MCP server.

The MCP server is ``tests/mcp_echo.py``, written with the SDK's own server side, run
over stdio (the agent spawns it) and over streamable HTTP (the test runs it). Its
``whoami`` tool echoes the user id it received in the request's ``_meta``.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker

from contracts import subjects
from contracts.tools import ListTools, ToolList
from services.agent.toolbox import TRUNCATED
from services.gateway.app import create_app as create_gateway
from services.gateway.auth import mint_token
from services.gateway.config import Settings as GatewaySettings
from services.launcher.natsserver import free_port, wait_for_port
from tests.integration.test_agent_stack import Stack, StartAgent, eventually, start_agent
from tests.integration.test_agent_tools import Lookups

pytestmark = pytest.mark.integration
__all__ = ["start_agent"]  # the fixture, imported for pytest
ECHO = Path(__file__).resolve().parent.parent / "mcp_echo.py"
SECRET = "mcp-test-secret"
MCP = {"agent_mcp_retry_initial": 0.2, "agent_mcp_retry_max": 1.0, "agent_mcp_ping_interval": 1.0}


class HttpEcho:
    """The echo server over streamable HTTP, as a process the test starts and kills."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ECHO), "http", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        assert wait_for_port(self.port, 20), "the MCP server did not start"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def http_echo() -> Iterator[HttpEcho]:
    echo = HttpEcho(free_port())
    try:
        yield echo
    finally:
        echo.kill()


@pytest.fixture(params=["stdio", "http"])
def echo_server(
    request: pytest.FixtureRequest, http_echo: HttpEcho, tmp_path: Path
) -> dict[str, Any]:
    """Configure the echo server (running) over one transport; its pid lands in a file."""
    pidfile = tmp_path / "echo.pid"
    if request.param == "stdio":
        env = {"MCP_ECHO_PIDFILE": str(pidfile), "PYTHONPATH": os.getcwd()}
        return {"name": "echo", "command": sys.executable, "args": [str(ECHO)], "env": env}
    http_echo.start()
    assert http_echo.proc is not None
    pidfile.write_text(str(http_echo.proc.pid))
    return {"name": "echo", "url": http_echo.url, "requires_approval": True}


async def with_lookups(stack: Stack) -> NatsBroker:
    """Answer memory recall and history search for the built-in tools."""
    lookups = Lookups()
    lookups.remember("alice", "The user said: I drink tea")
    broker = NatsBroker(stack.settings.nats_url)
    lookups.router(broker, stack)
    await broker.start()
    await broker.connection.flush()
    return broker


@pytest.fixture
async def lookups_for() -> AsyncIterator[list[NatsBroker]]:
    brokers: list[NatsBroker] = []
    yield brokers
    for broker in brokers:
        await broker.stop()


async def tool_names(stack: Stack) -> list[str]:
    body = ListTools(user_id="alice").model_dump_json().encode()
    answer = await stack.nc.request(subjects.AGENT_TOOLS_LIST, body, timeout=5)
    return [tool.name for tool in ToolList.model_validate_json(answer.data).items]


async def until_tools(stack: Stack, present: bool, name: str = "echo__whoami") -> list[str]:
    return await eventually(lambda: tool_names(stack), lambda names: (name in names) is present)


def call(tool: str, **arguments: Any) -> str:
    return f"[sim:call={tool} {json.dumps(arguments)}]"


async def test_the_model_calls_an_mcp_tool_for_the_jobs_user_only(
    start_agent: StartAgent, echo_server: dict[str, Any]
) -> None:
    stack = await start_agent(agent_mcp_servers=[echo_server], **MCP)
    names = await until_tools(stack, True)
    assert names[:2] == ["recall_memories", "search_history"]
    assert {"echo__whoami", "echo__slow", "echo__big"} <= set(names)

    # The model names another user in its arguments, even a `_meta`: the tool hears the job's.
    sneaky = call("echo__whoami", note="hi", user_id="bob", _meta={"chatbus/user_id": "bob"})
    alice_job = await stack.submit(f"as alice {sneaky}", user="alice")
    bob_job = await stack.submit(f"as bob {call('echo__whoami', note='hello')}", user="bob")
    alice, bob = await asyncio.gather(
        stack.final_state(alice_job.job_id), stack.final_state(bob_job.job_id)
    )
    assert alice.status == "completed" and alice.tools == ("echo__whoami",)
    assert alice.reply is not None
    assert alice.reply.content.endswith("[echo__whoami: user=alice note=hi]")
    assert bob.reply is not None
    assert bob.reply.content.endswith("[echo__whoami: user=bob note=hello]")
    events = [kind for kind, _ in await stack.events(alice.id)]
    assert "tool_call" in events and "tool_result" in events


async def test_a_long_result_is_cut_to_the_documented_size(
    start_agent: StartAgent, echo_server: dict[str, Any]
) -> None:
    stack = await start_agent(agent_mcp_servers=[echo_server], agent_mcp_result_chars=500, **MCP)
    await until_tools(stack, True)
    text = f"big {call('echo__big', chars=10_000)}"
    state = await stack.final_state((await stack.submit(text)).job_id)
    assert state.status == "completed"
    *_, second = await stack.llm_prompts(text)
    result = second[-1]["content"]
    assert len(result) == 500 and result.endswith(TRUNCATED)


async def test_a_server_killed_mid_call_is_a_tool_error_and_the_job_goes_on(
    start_agent: StartAgent, echo_server: dict[str, Any], tmp_path: Path
) -> None:
    stack = await start_agent(agent_mcp_servers=[echo_server], **MCP)
    await until_tools(stack, True)
    text = f"wait {call('echo__slow', seconds=30)}"
    job = await stack.submit(text)
    await eventually(  # the call reached the server
        lambda: stack.events(job.job_id), lambda found: any(k == "tool_call" for k, _ in found)
    )
    await asyncio.sleep(0.3)
    os.kill(int((tmp_path / "echo.pid").read_text()), signal.SIGKILL)

    state = await stack.final_state(job.job_id)
    assert state.status == "completed" and state.attempts == 1
    assert state.reply is not None
    assert "[echo__slow: error: echo__slow failed: MCP server echo went away during the call" in (
        state.reply.content
    )
    # The next job is answered; once the server is back (stdio: respawned), so are its tools.
    later = await stack.final_state((await stack.submit("still there?")).job_id)
    assert later.status == "completed"


async def test_a_server_absent_at_start_leaves_its_tools_out_until_it_answers(
    start_agent: StartAgent, http_echo: HttpEcho, lookups_for: list[NatsBroker]
) -> None:
    absent = [
        {"name": "echo", "url": http_echo.url},
        {"name": "gone", "command": "/nonexistent/mcp-server"},
    ]
    stack = await start_agent(agent_mcp_servers=absent, **MCP)
    lookups_for.append(await with_lookups(stack))
    assert await tool_names(stack) == ["recall_memories", "search_history"]

    asked = f"what do you remember about tea {call('echo__whoami', note='x')}"
    state = await stack.final_state((await stack.submit(asked, user="alice")).job_id)
    assert state.status == "completed" and state.tools == ("recall_memories",)
    assert state.reply is not None
    assert state.reply.content.endswith("[recall_memories: - The user said: I drink tea]")

    http_echo.start()  # retried with backoff: its tools come once it answers
    names = await until_tools(stack, True)
    assert "gone__whoami" not in names


async def test_get_api_tools_lists_what_the_model_can_call(
    start_agent: StartAgent, http_echo: HttpEcho
) -> None:
    http_echo.start()
    server = {"name": "echo", "url": http_echo.url, "requires_approval": True}
    stack = await start_agent(agent_mcp_servers=[server], **MCP)
    await until_tools(stack, True)
    gateway = create_gateway(GatewaySettings(nats_url=stack.settings.nats_url, jwt_secret=SECRET))
    headers = {"Authorization": f"Bearer {mint_token(SECRET, 'alice')}"}
    async with gateway.router.lifespan_context(gateway):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            answer = await http.get("/api/tools", headers=headers)
            anonymous = await http.get("/api/tools")
    assert anonymous.status_code == 401
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["next_cursor"] is None
    tools = {tool["name"]: tool for tool in body["items"]}
    assert tools["recall_memories"]["source"] == "builtin"
    assert tools["recall_memories"]["server"] is None
    whoami = tools["echo__whoami"]
    assert (whoami["source"], whoami["server"], whoami["requires_approval"]) == (
        "mcp", "echo", True,
    )
    assert whoami["parameters"]["required"] == ["note"]
    assert "which user" in whoami["description"]
