"""Deltas of a streaming reply: gathered per interval, nothing lost, in order."""

from services.agent.generate import DeltaBuffer
from services.runtime.meta import RequestMeta
from tests.unit.test_agent_fakes import FakeEvents, make_request

META = RequestMeta("req-deltas", "alice")


async def test_the_first_piece_goes_out_at_once_and_the_rest_is_gathered() -> None:
    events = FakeEvents()
    buffer = DeltaBuffer(events, make_request(), META, interval=60)
    for piece in ("Hel", "lo ", "the", "re"):
        await buffer.add(piece)
    assert [d.text for d in events.deltas] == ["Hel"]  # the others wait for the interval

    await buffer.flush()
    await buffer.flush()  # nothing left: no empty delta

    assert [(d.seq, d.text) for d in events.deltas] == [(0, "Hel"), (1, "lo there")]


async def test_no_interval_sends_every_piece() -> None:
    events = FakeEvents()
    request = make_request()
    buffer = DeltaBuffer(events, request, META, interval=0)
    for piece in ("a", "b", "c"):
        await buffer.add(piece)
    await buffer.flush()
    assert [(d.seq, d.text) for d in events.deltas] == [(0, "a"), (1, "b"), (2, "c")]
    assert {d.job_id for d in events.deltas} == {request.job_id}
