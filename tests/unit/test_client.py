"""The Python client's wire logic against a fake server (httpx.MockTransport): SSE parsing,
resuming a stream with Last-Event-ID, Retry-After, and the error mapping."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

import chatbus_client
from chatbus_client import (
    ChatbusError,
    Client,
    CompletedEvent,
    ConnectionFailed,
    DeltaEvent,
    NotFound,
    RateLimited,
    ReplyText,
    RetryPolicy,
    StatusEvent,
    ToolCallEvent,
    ToolResultEvent,
    UnknownEvent,
    ValidationFailed,
)
from chatbus_client.sse import SseParser

JOB_ID = "6f1c1a52-5c4b-4f55-9d7a-2a4c1e0f0001"
SESSION_ID = "6f1c1a52-5c4b-4f55-9d7a-2a4c1e0f0002"
NOW = datetime(2026, 1, 1, tzinfo=UTC).isoformat()


def job(status: str, attempts: int = 1, reply: str | None = None) -> dict[str, Any]:
    message = None
    if reply is not None:
        message = {"id": "6f1c1a52-5c4b-4f55-9d7a-2a4c1e0f0003", "session_id": SESSION_ID,
                   "role": "assistant", "content": reply, "created_at": NOW, "job_id": JOB_ID}
    return {"id": JOB_ID, "session_id": SESSION_ID, "status": status, "reply": message,
            "error": None, "attempts": attempts, "created_at": NOW, "started_at": NOW,
            "finished_at": NOW if status == "completed" else None, "tools": [], "new": "ignored"}


def sse(name: str, event_id: str, data: object) -> bytes:
    return f"event: {name}\r\nid: {event_id}\r\ndata: {json.dumps(data)}\r\n\r\n".encode()


class Broken(httpx.SyncByteStream):
    """A body that sends some bytes, then fails as a dropped connection does."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.ReadError("connection reset")


def test_the_parser_follows_the_event_stream_format() -> None:
    parser = SseParser()
    lines = [": ping", "event: delta", "id: d1.0", "data: {\"text\":", "data: \"hi\"}", "",
             "", "data: plain", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.name, e.id, e.data) for e in events] == [
        ("delta", "d1.0", '{"text":\n"hi"}'), ("message", None, "plain")
    ]


def test_a_dropped_stream_resumes_after_the_last_event_it_received() -> None:
    seen: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Last-Event-ID"))
        if len(seen) == 1:
            body = [sse("status", "e1", job("running")), sse("delta", "e2", {"text": "Hel"})]
            return httpx.Response(200, stream=Broken(body))
        return httpx.Response(200, content=sse("delta", "e3", {"text": "lo"})
                              + sse("completed", "e4", job("completed", reply="Hello")))

    with Client("http://test", "t", transport=httpx.MockTransport(server)) as client:
        events = list(client.jobs.stream(JOB_ID))
    assert seen == [None, "e2"]
    assert [type(e) for e in events] == [StatusEvent, DeltaEvent, DeltaEvent, CompletedEvent]
    reply = ReplyText()
    assert [reply.apply(e) for e in events] == ["", "Hel", "lo", ""]
    assert reply.text == "Hello"


def test_a_stream_that_keeps_breaking_gives_up() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken([]))

    with Client("http://test", "t", transport=httpx.MockTransport(server)) as client:
        with pytest.raises(ConnectionFailed, match="broke 3 times"):
            list(client.jobs.stream(JOB_ID, max_reconnects=2))


def test_a_stream_of_a_missing_job_raises_at_once() -> None:
    calls = []

    def server(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(404, json={"title": "Not Found", "status": 404,
                                         "detail": "no such job", "request_id": "r1"})

    with Client("http://test", "t", transport=httpx.MockTransport(server)) as client:
        with pytest.raises(NotFound) as missing:
            list(client.jobs.stream(JOB_ID))
    assert len(calls) == 1 and missing.value.request_id == "r1"


def test_a_retry_restarts_the_text_and_tool_events_are_typed() -> None:
    body = b"".join([
        sse("status", "a", job("running", attempts=1)), sse("delta", "b", {"text": "lost"}),
        sse("status", "c", job("running", attempts=2)),
        sse("tool_call", "d", {"call_id": "c1", "name": "recall", "arguments": "{}"}),
        sse("tool_result", "e", {"call_id": "c1", "name": "recall", "result": "x",
                                 "truncated": False}),
        sse("later_kind", "f", {"any": 1}), sse("delta", "g", {"text": "kept"}),
        sse("completed", "h", job("completed", attempts=2, reply="kept")),
    ])
    with Client("http://test", "t", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, content=body)
    )) as client:
        events = list(client.jobs.stream(JOB_ID))
    assert isinstance(events[3], ToolCallEvent) and isinstance(events[4], ToolResultEvent)
    assert isinstance(events[5], UnknownEvent) and events[5].name == "later_kind"
    reply = ReplyText()
    for event in events[:-1]:
        reply.apply(event)
    assert reply.text == "kept"


def test_retry_after_is_waited_out_a_bounded_number_of_times() -> None:
    answers = [429, 503, 201]

    def server(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0)
        if status != 201:
            return httpx.Response(status, headers={"Retry-After": "0"},
                                  json={"title": "busy", "status": status, "detail": "later"})
        return httpx.Response(201, json={
            "id": SESSION_ID, "persona": "default", "title": None, "status": "active",
            "created_at": NOW, "updated_at": NOW, "archived_at": None, "message_count": 0,
        })

    with Client("http://test", "t", transport=httpx.MockTransport(server)) as client:
        assert client.sessions.create().persona == "default"

    answers[:] = [429, 429]
    impatient = RetryPolicy(max_retries=1)
    with Client("http://test", "t", retry=impatient, transport=httpx.MockTransport(server)) as c:
        with pytest.raises(RateLimited) as limited:
            c.sessions.create()
    assert limited.value.retry_after == 0.0 and limited.value.detail == "later"


def test_errors_carry_the_problem_fields() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, headers={"X-Request-ID": "rid"}, json={
            "type": "about:blank", "title": "Unprocessable Content", "status": 422,
            "detail": "bad limit", "request_id": "rid",
            "errors": [{"loc": ["query", "limit"], "msg": "too small", "type": "x"}],
        })

    with Client("http://test", "t", transport=httpx.MockTransport(server)) as client:
        with pytest.raises(ValidationFailed) as invalid:
            client.sessions.list(limit=0)
    error = invalid.value
    assert isinstance(error, ChatbusError)
    assert (error.status, error.title, error.detail, error.request_id, error.type) == (
        422, "Unprocessable Content", "bad limit", "rid", "about:blank")
    assert error.errors == [{"loc": ["query", "limit"], "msg": "too small", "type": "x"}]
    assert str(error) == "422 Unprocessable Content: bad limit (request id rid)"


def test_the_public_api() -> None:
    assert {"Client", "AsyncClient", "Session", "Message", "Job", "Memory", "Page", "NotFound",
            "Conflict", "PayloadTooLarge", "ValidationFailed", "RateLimited", "Unavailable",
            "Unauthorized", "ChatbusError", "ReplyText", "JobEvent"} <= set(chatbus_client.__all__)
    assert all(hasattr(chatbus_client, name) for name in chatbus_client.__all__)
