"""Per-session order, cancels and hand-back on shutdown, with in-memory fakes.

A job that follows another waits for it by watching its record; a cancel is an id in
the cancel set (the bucket every replica watches) and, for a job running here, a
:meth:`JobRunner.cancel`; a replica that stops cancels its tasks, and that is not a
job's cancel: the job goes back to the queue with its attempt undone.
"""

import asyncio
import uuid

import pytest

from services.agent.service import JobCancelled, Running
from services.runtime.settle import ACK, Settle, Verdict, retry
from tests.unit.test_agent_fakes import WAIT, FakeDelivery, body, hanging_llm, make_request, rig

# ---- Running.step: a job's cancel against the replica stopping --------------------------


async def test_step_returns_what_the_work_returns() -> None:
    async def work() -> int:
        return 42

    assert await Running().step(work()) == 42


async def test_a_cancel_the_work_swallows_still_ends_the_step() -> None:
    run = Running()
    swallowed = asyncio.Event()

    async def stubborn() -> int:
        # What nats-py can do while it flushes: catch the cancel and carry on waiting.
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(30)
        return 1

    step = asyncio.create_task(run.step(stubborn()))
    await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(step, WAIT)
    assert swallowed.is_set()


async def test_cancel_stops_the_current_step_as_job_cancelled() -> None:
    run, started, stopped = Running(), asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    step = asyncio.create_task(run.step(work()))
    await asyncio.wait_for(started.wait(), WAIT)
    run.cancel()

    with pytest.raises(JobCancelled):
        await asyncio.wait_for(step, WAIT)
    assert stopped.is_set() and run.task is None


async def test_a_step_after_the_cancel_never_runs() -> None:
    run, ran = Running(), []

    async def work() -> None:
        ran.append(True)

    run.cancel()
    with pytest.raises(JobCancelled):
        await run.step(work())
    await asyncio.sleep(0)  # the work's task gets its turn, and is cancelled before it starts
    assert ran == []


async def test_replica_stopping_is_a_cancelled_error_not_a_job_cancel() -> None:
    run, started, stopped = Running(), asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    step = asyncio.create_task(run.step(work()))
    await asyncio.wait_for(started.wait(), WAIT)
    run.cancelled = True  # even with a cancel heard, the replica stopping wins
    step.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(step, WAIT)
    assert stopped.is_set()


# ---- per-session order -------------------------------------------------------------------


async def test_job_waits_for_the_job_it_follows_then_runs() -> None:
    r = rig(agent_ack_wait=0.03)
    first = r.queue(make_request("first"))
    second = r.queue(make_request("second", session_id=first.session_id, follows=first.job_id))
    delivery = FakeDelivery(body(second))
    task = asyncio.create_task(r.runner.handle(delivery))
    await asyncio.wait_for(delivery.beat.wait(), WAIT)  # held, and kept alive meanwhile
    assert r.jobs.waits == [first.job_id]
    assert r.llm.prompts == [] and r.jobs.state(second.job_id).status == "queued"

    r.jobs.change(first.job_id, status="completed")
    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict == ACK
    assert r.jobs.state(second.job_id).status == "completed"
    assert [p[-1]["content"] for p in r.llm.prompts] == ["second"]


async def test_job_not_its_turn_in_time_is_retried_without_counting_an_attempt() -> None:
    r = rig(agent_order_wait=0.05, agent_order_retry_delay=0.7)
    first = r.queue(make_request("first"))
    second = r.queue(make_request("second", session_id=first.session_id, follows=first.job_id))

    verdict = await r.run(second)

    assert verdict == retry(0.7)
    state = r.jobs.state(second.job_id)
    assert state.status == "queued" and state.attempts == 0
    assert r.llm.prompts == [] and r.events.log == []


async def test_job_following_a_job_that_is_gone_runs() -> None:
    r = rig()
    request = r.queue(make_request(follows=uuid.uuid4()))
    assert await r.run(request) == ACK
    assert r.jobs.state(request.job_id).status == "completed"


# ---- cancels -------------------------------------------------------------------------------


async def test_job_in_the_cancel_set_is_cancelled_without_running() -> None:
    r = rig()
    request = r.queue(make_request())
    r.cancels.add(request.job_id)

    verdict = await r.run(request)

    assert verdict == ACK
    state = r.jobs.state(request.job_id)
    assert state.status == "cancelled" and state.finished_at is not None
    assert state.attempts == 0 and r.llm.prompts == [] and r.history.appended == []
    assert r.events.finals == [state] and r.events.statuses == []
    assert [e.job_id for e in r.history.ended] == [request.job_id]


async def test_cancel_while_waiting_for_its_turn_ends_the_job() -> None:
    r = rig()
    first = r.queue(make_request("first"))
    second = r.queue(make_request("second", session_id=first.session_id, follows=first.job_id))
    task = r.start(second)
    await asyncio.wait_for(r.jobs.waiting.wait(), WAIT)

    r.runner.cancel(second.job_id)
    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict == ACK
    assert r.jobs.state(second.job_id).status == "cancelled"
    assert r.jobs.state(first.job_id).status == "queued"  # the earlier job is not touched
    assert r.llm.prompts == []


async def test_cancel_heard_while_waiting_is_honoured_before_starting() -> None:
    r = rig()
    first = r.queue(make_request("first"))
    second = r.queue(make_request("second", session_id=first.session_id, follows=first.job_id))
    task = r.start(second)
    await asyncio.wait_for(r.jobs.waiting.wait(), WAIT)

    r.cancels.add(second.job_id)  # in the set, but this replica was not told to stop it
    r.jobs.change(first.job_id, status="completed")
    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict == ACK
    state = r.jobs.state(second.job_id)
    assert state.status == "cancelled" and state.attempts == 0
    assert r.llm.prompts == []


async def test_cancel_during_generation_closes_the_stream_and_stores_no_reply() -> None:
    r = rig(llm=hanging_llm())
    request = r.queue(make_request())
    task = r.start(request)
    await asyncio.wait_for(r.llm.called.wait(), WAIT)

    r.runner.cancel(request.job_id)
    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict == ACK
    assert r.llm.closed.is_set()
    state = r.jobs.state(request.job_id)
    assert state.status == "cancelled" and state.finished_at is not None
    assert state.attempts == 1 and state.reply is None
    assert r.history.appended == []
    assert [s.status for s in r.events.finals] == ["cancelled"]
    assert [e.job_id for e in r.history.ended] == [request.job_id]
    assert r.runner.running == {}


async def test_reply_stored_before_the_cancel_completes_the_job() -> None:
    r = rig()
    request = r.queue(make_request())
    r.history.on_append = lambda: r.runner.cancel(request.job_id)

    verdict = await r.run(request)

    assert verdict == ACK
    state = r.jobs.state(request.job_id)
    assert state.status == "completed" and state.reply is not None
    assert r.history.ended == []


async def test_cancel_of_a_job_not_running_here_changes_nothing() -> None:
    r = rig()
    r.runner.cancel(uuid.uuid4())
    assert r.runner.running == {}


async def test_job_finished_by_another_delivery_meanwhile_acks_with_that_outcome() -> None:
    r = rig(llm=hanging_llm())
    request = r.queue(make_request())
    task = r.start(request)
    await asyncio.wait_for(r.llm.called.wait(), WAIT)
    r.jobs.change(request.job_id, status="cancelled")  # another replica ended it
    r.llm.gate.set()

    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict == ACK
    assert r.jobs.state(request.job_id).status == "cancelled"
    assert [s.status for s in r.events.finals] == ["cancelled"]


# ---- hand-back on shutdown -------------------------------------------------------------------


async def test_stopping_replica_hands_a_running_job_back_with_its_attempt_undone() -> None:
    r = rig(llm=hanging_llm())
    request = r.queue(make_request())
    task = r.start(request)
    await asyncio.wait_for(r.llm.called.wait(), WAIT)
    assert r.jobs.state(request.job_id).attempts == 1

    r.runner.stopping = True
    task.cancel()
    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict == Verdict(Settle.RETRY, 0.0)  # nak at once, for another replica
    assert r.llm.closed.is_set()
    state = r.jobs.state(request.job_id)
    assert state.status == "queued" and state.attempts == 0
    assert r.history.appended == [] and r.events.finals == [] and r.history.ended == []


async def test_stopping_replica_hands_back_a_waiting_job_without_writing_it() -> None:
    r = rig()
    first = r.queue(make_request("first"))
    second = r.queue(make_request("second", session_id=first.session_id, follows=first.job_id))
    task = r.start(second)
    await asyncio.wait_for(r.jobs.waiting.wait(), WAIT)
    writes = len(r.jobs.writes)

    r.runner.stopping = True
    task.cancel()
    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict == retry(0.0)
    assert len(r.jobs.writes) == writes
    assert r.jobs.state(second.job_id).status == "queued"


async def test_a_cancelled_task_of_a_replica_not_stopping_is_not_swallowed() -> None:
    r = rig(llm=hanging_llm())
    request = r.queue(make_request())
    task = r.start(request)
    await asyncio.wait_for(r.llm.called.wait(), WAIT)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert r.runner.running == {}
