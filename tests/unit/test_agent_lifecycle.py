"""Per-session order, cancel, leases, lanes and hand-back on shutdown, with in-memory fakes."""

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from contracts import subjects
from contracts.chat import RequestChat
from services.agent.errors import LLMError, Settle
from services.agent.ports import Verdict
from tests.unit.test_agent_fakes import (
    T0,
    FakeDelivery,
    FakeLLM,
    Rig,
    body,
    make_request,
    queued,
    rig,
)

WAIT = 10.0


def hanging_llm() -> FakeLLM:
    llm = FakeLLM()
    llm.gate = asyncio.Event()  # never set by the test: the model writes until it is stopped
    return llm


def ticking_clock() -> Callable[[], datetime]:
    """A clock that moves one second per reading, so successive leases differ."""
    ticks = iter(range(10_000))
    return lambda: T0 + timedelta(seconds=next(ticks))


async def lanes_of(r: Rig, request: RequestChat) -> tuple[tuple[object, ...], ...]:
    return (
        await r.lane(subjects.session_lane(request.session_id)),
        await r.lane(subjects.user_lane(request.user_id)),
    )


async def test_job_waits_for_the_head_of_its_session_then_runs() -> None:
    r = rig(agent_order_poll=0.01, agent_order_wait=WAIT, agent_ack_wait=0.03)
    first = make_request("first")
    second = make_request("second", session_id=first.session_id)
    await r.queue(first)
    await r.queue(second)
    delivery = FakeDelivery(body(second))

    task = asyncio.create_task(r.runner.handle(delivery))
    await asyncio.wait_for(delivery.beat.wait(), WAIT)  # held, and kept alive meanwhile
    assert r.llm.prompts == [] and r.jobs.state(second.job_id).status == "queued"
    r.jobs.change(first.job_id, status="completed")  # the head ends (its lane entry stays)

    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict.settle is Settle.ACK
    assert r.jobs.state(second.job_id).status == "completed"
    assert [p[-1]["content"] for p in r.llm.prompts] == ["second"]
    assert await lanes_of(r, second) == ((), (first.job_id,))  # stale head pruned from session


async def test_job_not_its_turn_is_retried_without_counting_an_attempt() -> None:
    r = rig(agent_order_poll=0.01, agent_order_wait=0.05, agent_order_retry_delay=0.7)
    first = make_request("first")
    second = make_request("second", session_id=first.session_id)
    await r.queue(first)
    await r.queue(second)

    verdict = await r.runner.handle(FakeDelivery(body(second)))

    assert verdict == Verdict(Settle.RETRY, 0.7)
    state = r.jobs.state(second.job_id)
    assert state.status == "queued" and state.attempts == 0
    assert r.llm.prompts == []


async def test_job_missing_from_its_lane_runs() -> None:
    r = rig(agent_order_wait=0)
    other = make_request("queued earlier")
    request = make_request(session_id=other.session_id)
    await r.queue(other)
    r.jobs.put(queued(request))  # not in any lane

    verdict = await r.runner.handle(FakeDelivery(body(request)))

    assert verdict.settle is Settle.ACK
    assert r.jobs.state(request.job_id).status == "completed"


async def test_cancel_requested_before_pickup_never_calls_the_model() -> None:
    r = rig()
    request = make_request()
    await r.queue(request)
    r.jobs.change(request.job_id, cancel_requested=True)

    verdict = await r.runner.handle(FakeDelivery(body(request)))

    assert verdict.settle is Settle.ACK
    state = r.jobs.state(request.job_id)
    assert state.status == "cancelled" and state.finished_at is not None
    assert state.attempts == 0 and r.llm.prompts == [] and r.history.appended == []
    assert await lanes_of(r, request) == ((), ())


async def test_cancel_while_streaming_closes_the_stream_and_stores_nothing() -> None:
    r = rig(llm=hanging_llm())
    request = make_request()
    await r.queue(request)
    task = asyncio.create_task(r.runner.handle(FakeDelivery(body(request))))
    await asyncio.wait_for(r.llm.called.wait(), WAIT)

    assert r.runner.cancel(request.job_id) is True
    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict.settle is Settle.ACK
    assert r.llm.closed.is_set()
    state = r.jobs.state(request.job_id)
    assert state.status == "cancelled" and state.finished_at is not None
    assert state.lease_expires_at is None
    assert r.history.appended == [] and r.events.completed_events == []
    assert await lanes_of(r, request) == ((), ())
    assert r.runner.cancel(request.job_id) is False  # no longer running here


async def test_cancel_requested_during_the_call_is_honoured_before_storing() -> None:
    llm = hanging_llm()
    r = rig(llm=llm)  # heartbeats far apart: only the check before storing can see it
    request = make_request()
    await r.queue(request)
    task = asyncio.create_task(r.runner.handle(FakeDelivery(body(request))))
    await asyncio.wait_for(llm.called.wait(), WAIT)
    r.jobs.change(request.job_id, cancel_requested=True)  # the broadcast was missed
    assert llm.gate is not None
    llm.gate.set()

    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict.settle is Settle.ACK
    assert r.jobs.state(request.job_id).status == "cancelled"
    assert r.history.appended == []


async def test_reply_stored_before_the_cancel_completes_the_job() -> None:
    r = rig()
    request = make_request()
    await r.queue(request)

    def cancel_now() -> None:
        r.jobs.change(request.job_id, cancel_requested=True)
        r.runner.cancel(request.job_id)

    r.history.on_append = cancel_now

    verdict = await r.runner.handle(FakeDelivery(body(request)))

    assert verdict.settle is Settle.ACK
    state = r.jobs.state(request.job_id)
    assert state.status == "completed" and state.reply is not None
    assert state.cancel_requested is True
    assert await lanes_of(r, request) == ((), ())


async def test_lease_is_written_at_start_and_renewed_by_heartbeats() -> None:
    llm = FakeLLM()
    r = rig(llm=llm, agent_ack_wait=0.06)
    r.runner.clock = ticking_clock()
    request = make_request()
    await r.queue(request)
    delivery = FakeDelivery(body(request))
    llm.gate = asyncio.Event()
    task = asyncio.create_task(r.runner.handle(delivery))

    async def renewed() -> None:
        while len([s for s in r.jobs.writes if s.status == "running"]) < 2:
            r.jobs.wrote.clear()
            await r.jobs.wrote.wait()

    await asyncio.wait_for(renewed(), WAIT)
    llm.gate.set()

    await asyncio.wait_for(task, WAIT)

    leases = [s.lease_expires_at for s in r.jobs.writes if s.status == "running"]
    assert leases[0] is not None and leases[1] is not None
    assert leases[1] > leases[0]
    assert r.jobs.state(request.job_id).lease_expires_at is None  # cleared when it ended


async def test_lease_renewal_keeps_a_concurrent_cancel_request_and_stops_the_job() -> None:
    r = rig(llm=hanging_llm(), agent_ack_wait=0.06)
    request = make_request()
    await r.queue(request)
    task = asyncio.create_task(r.runner.handle(FakeDelivery(body(request))))
    await asyncio.wait_for(r.llm.called.wait(), WAIT)
    r.jobs.change(request.job_id, cancel_requested=True)  # no broadcast: the fallback finds it

    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict.settle is Settle.ACK
    state = r.jobs.state(request.job_id)
    assert state.status == "cancelled" and state.cancel_requested
    assert all(s.cancel_requested for s in r.jobs.writes[-2:])


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_lanes_are_cleaned_after_the_final_state(outcome: str) -> None:
    error = LLMError("bad request", retryable=False) if outcome == "failed" else None
    r = rig(llm=FakeLLM(error=error))
    request = make_request()
    await r.queue(request)

    await r.runner.handle(FakeDelivery(body(request)))

    assert r.jobs.state(request.job_id).status == outcome
    assert await lanes_of(r, request) == ((), ())


async def test_finished_job_left_in_its_lanes_is_taken_out_at_pickup() -> None:
    r = rig()
    request = make_request()
    await r.queue(request)
    r.jobs.change(request.job_id, status="completed")  # crashed before leaving the lanes

    verdict = await r.runner.handle(FakeDelivery(body(request), 2))

    assert verdict.settle is Settle.ACK and r.llm.prompts == []
    assert await lanes_of(r, request) == ((), ())


async def test_stopping_replica_hands_a_running_job_back_to_the_queue() -> None:
    r = rig(llm=hanging_llm())
    request = make_request()
    await r.queue(request)
    task = asyncio.create_task(r.runner.handle(FakeDelivery(body(request))))
    await asyncio.wait_for(r.llm.called.wait(), WAIT)
    assert r.jobs.state(request.job_id).attempts == 1

    r.runner.stopping = True
    task.cancel()
    verdict = await asyncio.wait_for(task, WAIT)

    assert verdict == Verdict(Settle.RETRY, 0.0)  # nak at once, for another replica
    assert r.llm.closed.is_set()
    state = r.jobs.state(request.job_id)
    assert state.status == "queued" and state.attempts == 0
    assert state.lease_expires_at is None
    assert r.history.appended == []
    assert await lanes_of(r, request) == ((request.job_id,), (request.job_id,))
