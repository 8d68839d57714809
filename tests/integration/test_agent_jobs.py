"""The agent over real NATS, the simulated model over HTTP, and a stand-in for history."""

import json

import pytest

from contracts import subjects
from contracts.base import Ping, Pong
from contracts.chat import ChatDelta, JobState, RequestChat
from contracts.deadletter import DeadLetter
from tests.integration.test_agent_stack import StartAgent, eventually, start_agent

pytestmark = pytest.mark.integration
__all__ = ["start_agent"]  # the fixture, imported for pytest


async def test_job_completes_with_stored_events_and_context(start_agent: StartAgent) -> None:
    stack = await start_agent()
    first = await stack.submit("hello")
    assert (await stack.final_state(first.job_id)).status == "completed"

    second = await stack.submit("again please", session_id=first.session_id)
    state = await stack.final_state(second.job_id)

    expected = "Echo: again please (turn 2)"  # the first exchange reached the model
    assert state.status == "completed" and state.attempts == 1
    assert state.reply is not None and state.reply.content == expected
    assert state.reply.role == "assistant" and state.reply.job_id == second.job_id
    # Every event is stored on the job's own subject, in order: running, deltas, the end.
    events = await eventually(
        lambda: stack.events(second.job_id), lambda found: found[-1:][0][0] == "completed"
        if found else False,
    )
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "completed"
    assert set(kinds[1:-1]) == {"delta"}
    assert JobState.model_validate_json(events[0][1]).status == "running"
    text = "".join(ChatDelta.model_validate_json(body).text for _, body in events[1:-1])
    assert text == expected
    final = JobState.model_validate_json(events[-1][1])
    assert final.reply is not None and final.reply.content == expected
    assert stack.history.ended == []  # a completed job ends by its reply, no extra request
    pong = Pong.model_validate_json(
        (await stack.nc.request(subjects.AGENT_PING, Ping().model_dump_json().encode(), 5)).data
    )
    assert pong.service == "agent"


async def test_model_errors_fail_the_job_after_max_attempts(start_agent: StartAgent) -> None:
    stack = await start_agent(agent_max_attempts=2)
    request = await stack.submit("explode [sim:error]")

    state = await stack.final_state(request.job_id)

    assert state.status == "failed" and state.attempts == 2
    assert state.error is not None and state.error.code == "max_attempts"
    assert await stack.llm_requests("explode [sim:error]") == 2
    [failed] = await eventually(
        lambda: stack.stream_bodies(
            "JOB_EVENTS", subjects.job_event(request.job_id, "failed")
        ), bool,
    )
    assert JobState.model_validate_json(failed).attempts == 2
    assert stack.history.ended == [request.job_id]
    letters = await eventually(
        lambda: stack.stream_bodies("DEADLETTER", subjects.deadletter("agent")), bool
    )
    letter = DeadLetter.model_validate_json(letters[0])
    assert RequestChat.model_validate_json(letter.payload).job_id == request.job_id


async def test_malformed_message_is_dead_lettered_and_work_goes_on(start_agent: StartAgent) -> None:
    stack = await start_agent()
    await stack.publish(b'{"this is": "not a chat request"}')
    request = await stack.submit("still here")

    state = await stack.final_state(request.job_id)

    assert state.status == "completed"
    [body] = await eventually(
        lambda: stack.stream_bodies("DEADLETTER", subjects.deadletter("agent")), bool
    )
    letter = DeadLetter.model_validate_json(body)
    assert letter.subject == subjects.CHAT_REQUESTED
    assert letter.reason.startswith("not a valid RequestChat")
    assert json.loads(letter.payload) == {"this is": "not a chat request"}
    assert letter.headers[subjects.HEADER_REQUEST_ID] == "req-it"


async def test_completed_job_published_again_is_not_run_again(start_agent: StartAgent) -> None:
    stack = await start_agent()
    request = await stack.submit("only once")
    assert (await stack.final_state(request.job_id)).status == "completed"

    # A new message id, so JetStream's dedup window does not hide the repeat from the agent.
    await stack.publish(request.model_dump_json().encode(), msg_id=f"{request.job_id}.again")
    await eventually(stack.consumer_idle, bool)

    assert await stack.llm_requests("only once") == 1
    consumer = await stack.js.consumer_info(
        subjects.CHAT_JOBS_STREAM.name, subjects.AGENT_DURABLE
    )
    assert consumer.config.ack_wait == 5 and consumer.config.max_deliver == -1
    assert (await stack.state(request.job_id)).status == "completed"
    completed = subjects.job_event(request.job_id, "completed")
    assert len(await stack.stream_bodies("JOB_EVENTS", completed)) == 1
