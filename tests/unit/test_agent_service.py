"""The job runner's pipeline and settlements, with in-memory fakes for its ports."""

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest

from contracts.chat import RequestChat
from contracts.history import MessageRecord
from services.agent.errors import HistoryError, LLMError, SessionGone
from services.runtime.settle import ACK, Settle, Verdict
from tests.unit.test_agent_fakes import (
    T0,
    WAIT,
    FakeDelivery,
    FakeHistory,
    FakeLLM,
    body,
    hanging_llm,
    make_request,
    rig,
)


async def test_happy_path_streams_deltas_and_completes() -> None:
    r = rig()
    request = r.queue(make_request())

    verdict = await r.run(request)

    assert verdict == ACK
    state = r.jobs.state(request.job_id)
    assert state.status == "completed" and state.attempts == 1
    assert state.reply is not None and state.reply.content == "Hello there"
    assert state.started_at is not None and state.finished_at is not None
    assert "".join(d.text for d in r.events.deltas) == "Hello there"
    assert {(d.job_id, d.attempt) for d in r.events.deltas} == {(request.job_id, 1)}
    kinds = [kind for kind, _ in r.events.log]
    assert kinds[0] == "status" and set(kinds[1:-1]) == {"delta"} and kinds[-1] == "final"
    assert [s.status for s in r.events.statuses] == ["running"]
    assert r.events.finals == [state]
    [appended] = r.history.appended
    assert (appended.role, appended.job_id, appended.content) == (
        "assistant", request.job_id, "Hello there",
    )
    assert r.history.ended == []  # the stored reply ended the job in history
    assert r.llm.prompts == [
        [
            {"role": "system", "content": r.runner.settings.agent_system_prompt.replace(
                "{persona}", "friend")},
            {"role": "user", "content": "hi there"},
        ]
    ]
    # Every bus call of the job carries the incoming request id and user, and no deadline.
    assert {(m.request_id, m.user_id, m.deadline) for m in r.history.metas} == {
        ("req-1", "u1", None)
    }
    assert r.runner.running == {}


async def test_first_delivery_reads_nothing_and_starts_at_the_announced_revision() -> None:
    r = rig()
    request = r.queue(make_request())
    revision = request.revision

    await r.run(request)

    assert r.jobs.gets == []
    running = r.jobs.writes[1]  # the gateway's record, then the agent's first write
    assert running.status == "running" and running.attempts == 1
    assert r.jobs.states[request.job_id].revision == revision + 2  # running, then completed


async def test_lost_start_is_reloaded_and_started_from_the_latest_state() -> None:
    r = rig()
    request = r.queue(make_request())
    r.jobs.change(request.job_id, tools=("moved",))  # the record moved past the announced one

    verdict = await r.run(request)

    assert verdict == ACK
    assert r.jobs.gets == [request.job_id]
    state = r.jobs.state(request.job_id)
    assert state.status == "completed" and state.attempts == 1


async def test_redelivery_reads_the_record() -> None:
    r = rig()
    request = r.queue(make_request(), status="queued", attempts=1)

    verdict = await r.run(request, deliveries=2)

    assert verdict == ACK
    assert r.jobs.gets == [request.job_id]
    assert r.jobs.state(request.job_id).attempts == 2


async def test_missing_state_is_created_from_the_request() -> None:
    r = rig()
    request = make_request()  # never recorded, announced without a revision

    verdict = await r.run(request)

    assert verdict == ACK
    state = r.jobs.state(request.job_id)
    assert state.status == "completed" and state.created_at == request.created_at


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_finished_job_is_acked_and_announced_again_not_run(status: str) -> None:
    r = rig()
    request = r.queue(make_request(), status=status, finished_at=T0)
    state = r.jobs.state(request.job_id)

    verdict = await r.run(request, deliveries=2)

    assert verdict == ACK
    assert r.llm.prompts == [] and r.history.appended == []
    assert r.jobs.state(request.job_id) == state
    assert r.events.finals == [state]
    # History hears of a job that ended without a reply; a completed one ended with its reply.
    ended = [(e.job_id, e.user_id) for e in r.history.ended]
    assert ended == ([] if status == "completed" else [(request.job_id, "u1")])


async def test_completed_job_redelivered_announces_its_outcome_again() -> None:
    r = rig()
    request = r.queue(make_request())
    await r.run(request)
    await r.run(request, deliveries=2)
    assert len(r.llm.prompts) == 1
    assert [(s.id, s.status) for s in r.events.finals] == [(request.job_id, "completed")] * 2


async def test_final_event_not_stored_is_retried_and_announced_by_the_redelivery() -> None:
    r = rig()
    request = r.queue(make_request())
    r.events.failures["final"] = 1

    first = await r.run(request)
    again = await r.run(request, deliveries=2)

    assert first.settle is Settle.RETRY  # not acked before its end is replayable
    assert again == ACK
    assert r.jobs.state(request.job_id).status == "completed"
    assert [s.status for s in r.events.finals] == ["completed"]
    assert len(r.llm.prompts) == 1


async def test_lost_status_event_does_not_stop_the_job() -> None:
    r = rig()
    request = r.queue(make_request())
    r.events.failures["status"] = 1
    assert await r.run(request) == ACK
    assert r.events.statuses == []
    assert r.jobs.state(request.job_id).status == "completed"


async def test_failure_with_attempts_left_is_retried_and_shown_as_queued() -> None:
    r = rig(llm=FakeLLM(error=LLMError("model answered 500")), agent_max_attempts=3)
    request = r.queue(make_request())

    verdict = await r.run(request)

    assert verdict == Verdict(Settle.RETRY, 0.5)
    state = r.jobs.state(request.job_id)
    assert state.status == "queued" and state.attempts == 1
    assert [(s.status, s.attempts) for s in r.events.statuses] == [("running", 1), ("queued", 1)]
    assert r.events.finals == [] and r.history.ended == []


async def test_last_attempt_fails_the_job_and_dead_letters_it() -> None:
    r = rig(llm=FakeLLM(error=LLMError("model answered 500")), agent_max_attempts=3)
    request = r.queue(make_request(), attempts=2)

    verdict = await r.run(request, deliveries=3)

    assert verdict.settle is Settle.DROP
    assert verdict.dead_letter is not None and "model answered 500" in verdict.dead_letter
    state = r.jobs.state(request.job_id)
    assert state.status == "failed" and state.attempts == 3
    assert state.error is not None and state.error.code == "max_attempts"
    assert "model answered 500" in state.error.message
    assert r.events.finals == [state]
    assert [e.job_id for e in r.history.ended] == [request.job_id]


async def test_permanent_model_error_fails_at_once() -> None:
    r = rig(llm=FakeLLM(error=LLMError("model answered 400: bad", retryable=False)))
    request = r.queue(make_request())
    verdict = await r.run(request)
    assert verdict.settle is Settle.DROP and verdict.dead_letter == "model answered 400: bad"
    state = r.jobs.state(request.job_id)
    assert state.status == "failed" and state.attempts == 1
    assert state.error is not None and state.error.code == "llm_error"


async def test_worker_that_died_on_the_last_attempt_is_not_retried() -> None:
    r = rig(agent_max_attempts=2)
    request = r.queue(make_request(), status="running", attempts=2)
    verdict = await r.run(request, deliveries=3)
    assert verdict.settle is Settle.DROP and verdict.dead_letter is not None
    assert r.llm.prompts == []
    state = r.jobs.state(request.job_id)
    assert state.status == "failed" and state.error is not None
    assert state.error.code == "max_attempts"


async def test_history_error_and_unexpected_error_count_as_failed_attempts() -> None:
    history = FakeHistory()
    r = rig(history=history, agent_max_attempts=2)
    request = r.queue(make_request())
    history.error = HistoryError("history did not answer")
    assert (await r.run(request)).settle is Settle.RETRY
    history.error = ZeroDivisionError("bug")
    assert (await r.run(request, deliveries=2)).settle is Settle.DROP
    state = r.jobs.state(request.job_id)
    assert state.attempts == 2 and state.status == "failed"
    assert state.error is not None and "ZeroDivisionError" in state.error.message


@pytest.mark.parametrize("where", ["context", "reply"])
async def test_session_gone_from_history_ends_the_job_cancelled(where: str) -> None:
    history = FakeHistory()
    gone = SessionGone("history.message.append: not_found: no such session")
    if where == "context":
        history.error = gone
    else:
        history.append_error = gone
    r = rig(history=history)
    request = r.queue(make_request())

    verdict = await r.run(request)

    assert verdict == ACK
    state = r.jobs.state(request.job_id)
    assert state.status == "cancelled" and state.reply is None and state.error is None
    assert r.events.finals == [state]
    assert [e.job_id for e in r.history.ended] == [request.job_id]


async def test_malformed_message_is_dead_lettered_and_dropped() -> None:
    r = rig()
    verdict = await r.runner.handle(FakeDelivery(b'{"job_id": "nope"}'))
    assert verdict.settle is Settle.DROP
    assert verdict.dead_letter is not None
    assert verdict.dead_letter.startswith("not a valid RequestChat")
    assert "job_id" in verdict.dead_letter
    assert r.llm.prompts == [] and r.jobs.states == {} and r.events.log == []


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

    await r.run(r.queue(request))

    assert history.queries[0].limit == 4 and history.queries[0].session_id == request.session_id
    [prompt] = r.llm.prompts
    assert [(m["role"], m["content"]) for m in prompt[1:]] == [
        ("user", "second"), ("assistant", "reply two"), ("user", "third"),
    ]


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

    await r.run(r.queue(request))

    [prompt] = r.llm.prompts
    assert [m["content"] for m in prompt[1:]] == [
        "zero", "reply zero", "first", "reply one", "second",
    ]


async def test_heartbeat_keeps_a_long_call_alive() -> None:
    llm = FakeLLM()
    r = rig(llm=llm, agent_ack_wait=0.03)
    request = r.queue(make_request())
    delivery = FakeDelivery(body(request))
    llm.gate = delivery.beat  # the model answers only after a heartbeat went out

    verdict = await asyncio.wait_for(r.runner.handle(delivery), WAIT)

    assert verdict == ACK and delivery.beats >= 1


async def test_delivery_of_a_job_running_here_is_postponed() -> None:
    r = rig(llm=hanging_llm(), agent_ack_wait=7.0)
    request = r.queue(make_request())
    task = r.start(request)
    await asyncio.wait_for(r.llm.called.wait(), WAIT)

    again = await r.run(request, deliveries=2)

    assert again == Verdict(Settle.RETRY, 7.0)
    assert len(r.llm.prompts) == 1
    r.llm.gate.set()
    assert await asyncio.wait_for(task, WAIT) == ACK
