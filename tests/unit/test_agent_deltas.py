"""A reply's events: text gathered per interval, tool events in order among it, results cut."""

from contracts.chat import TOOL_RESULT_EVENT_CHARS, ToolCalled, ToolReturned
from services.agent.generate import EventStream
from services.agent.toolloop import ToolCall
from services.runtime.meta import RequestMeta
from tests.unit.test_agent_fakes import FakeEvents, make_request

META = RequestMeta("req-deltas", "alice")
CALL = ToolCall("call-1", "recall_memories", '{"query": "tea"}')


def stream(events: FakeEvents, interval: float, attempt: int = 2) -> EventStream:
    return EventStream(events, make_request(), attempt, META, interval)


async def test_the_first_piece_goes_out_at_once_and_the_rest_is_gathered() -> None:
    events = FakeEvents()
    out = stream(events, interval=60)
    for piece in ("Hel", "lo ", "the", "re"):
        await out.text(piece)
    assert [d.text for d in events.deltas] == ["Hel"]  # the others wait for the interval

    await out.flush()
    await out.flush()  # nothing left: no empty delta

    assert [d.text for d in events.deltas] == ["Hel", "lo there"]
    assert {(d.job_id, d.attempt) for d in events.deltas} == {(out.job_id, 2)}


async def test_no_interval_sends_every_piece() -> None:
    events = FakeEvents()
    out = stream(events, interval=0)
    for piece in ("a", "b", "c"):
        await out.text(piece)
    await out.flush()
    assert [d.text for d in events.deltas] == ["a", "b", "c"]


async def test_pending_text_goes_out_before_a_tool_event() -> None:
    events = FakeEvents()
    out = stream(events, interval=60)
    await out.text("Let me ")
    await out.text("look.")
    await out.called(CALL)
    await out.returned(CALL, "- likes tea")
    await out.text("You like tea.")
    await out.flush()

    assert [(kind, getattr(e, "text", None)) for kind, e in events.log] == [
        ("delta", "Let me "),
        ("delta", "look."),
        ("tool_call", None),
        ("tool_result", None),
        ("delta", "You like tea."),
    ]
    [called] = events.of("tool_call")
    assert called == ToolCalled(
        job_id=out.job_id, attempt=2, call_id="call-1", name="recall_memories",
        arguments='{"query": "tea"}',
    )
    [returned] = events.of("tool_result")
    assert (returned.call_id, returned.result, returned.truncated) == (
        "call-1", "- likes tea", False,
    )


async def test_a_long_tool_result_is_cut_and_marked_truncated() -> None:
    events = FakeEvents()
    out = stream(events, interval=0)
    exact = "x" * TOOL_RESULT_EVENT_CHARS
    await out.returned(CALL, exact)
    await out.returned(CALL, exact + "y")
    first, second = events.of("tool_result")
    assert isinstance(second, ToolReturned)
    assert (first.result, first.truncated) == (exact, False)
    assert (second.result, second.truncated) == (exact, True)


async def test_a_lost_event_does_not_stop_the_stream() -> None:
    events = FakeEvents()
    events.failures = {"delta": 1, "tool_call": 1}
    out = stream(events, interval=0)
    await out.text("lost")
    await out.called(CALL)
    await out.text("kept")
    assert [d.text for d in events.deltas] == ["kept"]
    assert events.of("tool_call") == []
