"""The job runner's rules, with in-memory fakes for the store, history, model and bus."""

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest

from contracts.chat import RequestChat
from contracts.history import MessageRecord
from services.agent.errors import HistoryError, LLMError, Settle
from tests.unit.test_agent_fakes import (
    T0,
    FakeDelivery,
    FakeHistory,
    FakeLLM,
    make_request,
    queued,
    rig,
)


async def test_happy_path_streams_deltas_and_completes() -> None:
    r = rig()
    request = make_request()
    r.jobs.put(queued(request))

    verdict = await r.runner.handle(FakeDelivery(request.model_dump_json().encode()))

    assert verdict.settle is Settle.ACK
    assert [(d.seq, d.text) for d in r.events.deltas] == [(0, "Hello "), (1, "there")]
    state = r.jobs.states[request.job_id].state
    assert state.status == "completed" and state.attempts == 1
    assert state.reply is not None and state.reply.content == "Hello there"
    assert state.started_at is not None and state.finished_at is not None
    assert r.history.appended[0].role == "assistant"
    assert r.history.appended[0].job_id == request.job_id
    assert [e.reply.content for e in r.events.completed_events] == ["Hello there"]
    assert r.llm.prompts == [
        [
            {"role": "system", "content": r.runner.settings.agent_system_prompt.replace(
                "{persona}", "friend")},
            {"role": "user", "content": "hi there"},
        ]
    ]
    # Every bus call of the job carries the incoming request id and user.
    seen = {(m.request_id, m.user_id, m.deadline) for m in r.history.metas}
    assert seen == {("req-1", "u1", None)}


async def test_missing_state_is_created_from_the_request() -> None:
    r = rig()
    request = make_request()
    verdict = await r.runner.handle(FakeDelivery(request.model_dump_json().encode()))
    assert verdict.settle is Settle.ACK
    assert r.jobs.states[request.job_id].state.status == "completed"


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_finished_job_is_not_run_again(status: str) -> None:
    r = rig()
    request = make_request()
    r.jobs.put(queued(request, status=status))

    verdict = await r.runner.handle(FakeDelivery(request.model_dump_json().encode(), 2))

    assert verdict.settle is Settle.ACK
    assert r.llm.prompts == []
    assert r.history.appended == []
    assert r.jobs.states[request.job_id].state.status == status


async def test_completed_job_redelivered_announces_its_outcome_again() -> None:
    r = rig()
    request = make_request()
    await r.runner.handle(FakeDelivery(request.model_dump_json().encode()))
    await r.runner.handle(FakeDelivery(request.model_dump_json().encode(), 2))
    assert len(r.llm.prompts) == 1
    assert [e.job_id for e in r.events.completed_events] == [request.job_id] * 2


async def test_failure_with_attempts_left_is_retried() -> None:
    r = rig(llm=FakeLLM(error=LLMError("model answered 500")), agent_max_attempts=3)
    request = make_request()
    r.jobs.put(queued(request))

    verdict = await r.runner.handle(FakeDelivery(request.model_dump_json().encode()))

    assert verdict.settle is Settle.RETRY and verdict.delay == 0.5
    state = r.jobs.states[request.job_id].state
    assert state.status == "running" and state.attempts == 1
    assert r.events.failed_events == [] and r.events.letters == []


async def test_last_attempt_fails_the_job_and_dead_letters_it() -> None:
    r = rig(llm=FakeLLM(error=LLMError("model answered 500")), agent_max_attempts=3)
    request = make_request()
    r.jobs.put(queued(request, status="running", attempts=2))

    verdict = await r.runner.handle(FakeDelivery(request.model_dump_json().encode(), 3))

    assert verdict.settle is Settle.DROP
    state = r.jobs.states[request.job_id].state
    assert state.status == "failed" and state.attempts == 3
    assert state.error is not None and state.error.code == "max_attempts"
    assert "model answered 500" in state.error.message
    assert [(e.job_id, e.attempts) for e in r.events.failed_events] == [(request.job_id, 3)]
    [(letter, msg_id)] = r.events.letters
    assert letter.service == "agent" and letter.deliveries == 3
    assert msg_id == f"{request.job_id}.deadletter"
    assert RequestChat.model_validate_json(letter.payload) == request


async def test_permanent_model_error_fails_at_once() -> None:
    r = rig(llm=FakeLLM(error=LLMError("model answered 400: bad", retryable=False)))
    request = make_request()
    verdict = await r.runner.handle(FakeDelivery(request.model_dump_json().encode()))
    assert verdict.settle is Settle.DROP
    state = r.jobs.states[request.job_id].state
    assert state.status == "failed" and state.attempts == 1
    assert state.error is not None and state.error.code == "llm_error"


async def test_worker_that_died_on_the_last_attempt_is_not_retried() -> None:
    r = rig(agent_max_attempts=2)
    request = make_request()
    r.jobs.put(queued(request, status="running", attempts=2))
    verdict = await r.runner.handle(FakeDelivery(request.model_dump_json().encode(), 3))
    assert verdict.settle is Settle.DROP
    assert r.llm.prompts == []
    assert r.jobs.states[request.job_id].state.status == "failed"


async def test_history_error_and_unexpected_error_count_as_failed_attempts() -> None:
    history = FakeHistory()
    r = rig(history=history, agent_max_attempts=2)
    request = make_request()
    body = request.model_dump_json().encode()
    history.error = HistoryError("history did not answer")
    assert (await r.runner.handle(FakeDelivery(body))).settle is Settle.RETRY
    history.error = ZeroDivisionError("bug")
    assert (await r.runner.handle(FakeDelivery(body, 2))).settle is Settle.DROP
    state = r.jobs.states[request.job_id].state
    assert state.attempts == 2 and state.status == "failed"
    assert state.error is not None and "ZeroDivisionError" in state.error.message


async def test_malformed_message_is_dead_lettered_and_dropped() -> None:
    r = rig()
    verdict = await r.runner.handle(FakeDelivery(b'{"job_id": "nope"}'))
    assert verdict.settle is Settle.DROP
    [(letter, _)] = r.events.letters
    assert letter.reason.startswith("not a valid RequestChat")
    assert "job_id" in letter.reason
    assert letter.payload == '{"job_id": "nope"}'
    assert r.llm.prompts == [] and r.jobs.states == {}


def record(
    request: RequestChat, role: str, content: str, minutes: int, **extra: Any
) -> MessageRecord:
    values: dict[str, Any] = {
        "id": uuid.uuid4(), "session_id": request.session_id, "user_id": "u1", "role": role,
        "content": content, "created_at": T0 + timedelta(minutes=minutes), "job_id": uuid.uuid4(),
    }
    return MessageRecord.model_validate(values | extra)


async def test_context_is_oldest_first_without_the_jobs_own_or_later_messages() -> None:
    request = make_request("third")
    own = record(request, "user", "third", 5, id=request.message_id, job_id=request.job_id)
    newest_first = [
        record(request, "user", "fourth (queued after us)", 6),
        own,
        record(request, "assistant", "reply two", 4),
        record(request, "user", "second", 3),
        record(request, "assistant", "reply one", 2),
        record(request, "user", "first", 1),
    ]
    history = FakeHistory(newest_first)
    r = rig(history=history, agent_context_messages=3)

    await r.runner.handle(FakeDelivery(request.model_dump_json().encode()))

    assert history.queries[0].limit == 4 and history.queries[0].session_id == request.session_id
    [prompt] = r.llm.prompts
    assert [(m["role"], m["content"]) for m in prompt[1:]] == [
        ("user", "second"), ("assistant", "reply two"), ("user", "third"),
    ]


async def test_heartbeat_keeps_a_long_call_alive() -> None:
    llm = FakeLLM()
    r = rig(llm=llm, agent_ack_wait=0.03)
    request = make_request()
    delivery = FakeDelivery(request.model_dump_json().encode())
    llm.gate = delivery.beat  # the model answers only after a heartbeat went out

    verdict = await asyncio.wait_for(r.runner.handle(delivery), 10)

    assert verdict.settle is Settle.ACK and delivery.beats >= 1


async def test_job_cancelled_while_running_is_abandoned() -> None:
    llm = FakeLLM()
    llm.gate = asyncio.Event()  # never set: the model hangs until the job is cancelled
    r = rig(llm=llm, agent_ack_wait=0.03)
    request = make_request()
    r.jobs.put(queued(request))
    delivery = FakeDelivery(request.model_dump_json().encode())
    task = asyncio.create_task(r.runner.handle(delivery))
    await asyncio.wait_for(llm.called.wait(), 10)
    current = r.jobs.states[request.job_id].state
    r.jobs.put(current.model_copy(update={"status": "cancelled"}))

    verdict = await asyncio.wait_for(task, 10)

    assert verdict.settle is Settle.ACK
    assert r.jobs.states[request.job_id].state.status == "cancelled"
    assert r.events.completed_events == [] and r.history.appended == []


async def test_reply_to_the_previous_message_stored_after_ours_is_context() -> None:
    request = make_request("second")
    first_job = uuid.uuid4()
    newest_first = [
        record(request, "user", "third (queued after us)", 6),
        record(request, "assistant", "reply one", 5, job_id=first_job),  # ran after we queued
        record(request, "user", "second", 4, id=request.message_id, job_id=request.job_id),
        record(request, "user", "first", 3, job_id=first_job),
        record(request, "assistant", "reply zero", 2),
        record(request, "user", "zero", 1),
    ]
    r = rig(history=FakeHistory(newest_first), agent_context_messages=10)

    await r.runner.handle(FakeDelivery(request.model_dump_json().encode()))

    [prompt] = r.llm.prompts
    assert [m["content"] for m in prompt[1:]] == [
        "zero", "reply zero", "first", "reply one", "second",
    ]
