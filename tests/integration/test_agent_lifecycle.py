"""Per-session order, cancel and graceful shutdown of the agent, over real NATS."""

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from services.agent.app import create_app
from tests.integration.test_agent_stack import Stack, StartAgent, eventually, start_agent

pytestmark = pytest.mark.integration
__all__ = ["start_agent"]  # the fixture, imported for pytest


async def test_jobs_of_one_session_run_in_order_with_the_earlier_reply(
    start_agent: StartAgent,
) -> None:
    stack = await start_agent()
    first = await stack.submit("first [sim:slow=1]")
    second = await stack.submit("second", session_id=first.session_id, follows=first.job_id)

    done_first = await stack.final_state(first.job_id)
    done_second = await stack.final_state(second.job_id)

    assert done_first.status == done_second.status == "completed"
    assert done_first.finished_at is not None and done_second.started_at is not None
    assert done_second.started_at >= done_first.finished_at
    [prompt] = await stack.llm_prompts("second")
    assert {"role": "assistant", "content": "Echo: first [sim:slow=1] (turn 1)"} in [
        {"role": m["role"], "content": m["content"]} for m in prompt
    ]
    assert done_second.reply is not None
    assert done_second.reply.content == "Echo: second (turn 2)"


async def test_a_cancelled_earlier_job_lets_the_next_one_start(start_agent: StartAgent) -> None:
    stack = await start_agent()
    first = await stack.submit("first [sim:slow=30]")
    second = await stack.submit("second", session_id=first.session_id, follows=first.job_id)
    await eventually(lambda: stack.state(first.job_id), lambda s: s.status == "running")
    assert (await stack.state(second.job_id)).status == "queued"  # waiting, not polling

    await stack.cancel(first.job_id)

    assert (await stack.final_state(first.job_id, timeout=10)).status == "cancelled"
    done = await stack.final_state(second.job_id, timeout=10)
    assert done.status == "completed" and done.attempts == 1
    assert stack.history.ended == [first.job_id]


async def test_jobs_of_different_sessions_run_side_by_side(start_agent: StartAgent) -> None:
    stack = await start_agent()
    one = await stack.submit("one [sim:slow=1]")
    two = await stack.submit("two [sim:slow=1]")

    a, b = await stack.final_state(one.job_id), await stack.final_state(two.job_id)

    assert a.status == b.status == "completed"
    assert a.started_at and a.finished_at and b.started_at and b.finished_at
    assert a.started_at < b.finished_at and b.started_at < a.finished_at


async def test_cancel_stops_a_running_job_and_closes_its_stream(start_agent: StartAgent) -> None:
    stack = await start_agent()
    request = await stack.submit("cancel me [sim:slow=30]")
    await eventually(lambda: stack.state(request.job_id), lambda s: s.status == "running")

    await stack.cancel(request.job_id)

    state = await stack.final_state(request.job_id, timeout=10)

    assert state.status == "cancelled" and state.finished_at is not None
    assert stack.history.replies(request.job_id) == []
    aborted = await eventually(lambda: stack.sim_seen(), lambda seen: bool(seen["aborted"]))
    assert aborted["aborted"] == ["cancel me [sim:slow=30]"]
    await eventually(stack.consumer_idle, bool)  # the delivery was acked


async def test_a_job_cancelled_before_its_delivery_never_runs(start_agent: StartAgent) -> None:
    stack = await start_agent(in_process=False)  # no agent yet: the job waits in the stream
    request = await stack.submit("never run me")
    await stack.cancel(request.job_id)
    app = create_app(stack.settings)
    await app.start()
    try:
        state = await stack.final_state(request.job_id)
    finally:
        await app.stop()

    assert state.status == "cancelled" and state.attempts == 0
    assert await stack.llm_requests("never run me") == 0


Process = asyncio.subprocess.Process
Spawn = Callable[..., Awaitable[tuple[Process, Path]]]


@pytest.fixture
async def spawn_agent(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start ``python -m services.agent`` processes; kill whatever is left at the end."""
    procs: list[Process] = []

    async def spawn(stack: Stack, name: str, **env: str) -> tuple[Process, Path]:
        log = tmp_path / f"{name}.log"
        values = {
            **os.environ,
            "NATS_URL": stack.settings.nats_url,
            "OPENAI_BASE_URL": stack.settings.openai_base_url or "",
            "LLM_MAX_RETRIES": "0",
            "AGENT_ACK_WAIT": "5",
            "AGENT_CONCURRENCY": "8",
            "INSTANCE": name,
            "LOG_FORMAT": "json",
            **env,
        }
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.agent", env=values, stdout=out, stderr=out
            )
        procs.append(proc)
        await eventually(
            lambda: asyncio.sleep(0, log.read_text()), lambda text: "agent started" in text
        )
        return proc, log

    yield spawn
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_hands_a_running_job_to_another_replica(
    start_agent: StartAgent, spawn_agent: Spawn
) -> None:
    stack = await start_agent(in_process=False)
    grace = 1.0
    first, first_log = await spawn_agent(stack, "agent-a", AGENT_SHUTDOWN_GRACE=str(grace))
    request = await stack.submit("long job [sim:slow=4]")
    await eventually(lambda: stack.state(request.job_id), lambda s: s.status == "running")
    # SIGTERM only once the model call is under way, so the handed-back attempt is a real one.
    await eventually(lambda: stack.llm_requests("long job [sim:slow=4]"), lambda n: n == 1)
    await spawn_agent(stack, "agent-b")

    first.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(first.wait(), grace + 8)
    state = await stack.final_state(request.job_id)

    assert code == 0
    assert state.status == "completed" and state.attempts == 1  # the stopped attempt undone
    assert len(stack.history.replies(request.job_id)) == 1
    assert await stack.llm_requests("long job [sim:slow=4]") == 2
    assert state.reply is not None and state.reply.content == "Echo: long job [sim:slow=4] (turn 1)"
    assert "handed back to the queue" in first_log.read_text()
