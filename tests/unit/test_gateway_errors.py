"""The gateway's one error mapping: problem+json, request ids, limits, bus failures, bugs."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from contracts import subjects
from contracts.base import BusError as ReplyError
from contracts.history import SessionReply
from services.gateway.errors import Conflict, TooManyRequests, from_reply
from services.runtime.meta import BusProtocolError, BusTimeout, BusUnavailable
from tests.unit.test_gateway_fakes import FakeBus, bearer, gateway_client

PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}


def session_url() -> str:
    return f"/api/sessions/{uuid.uuid4()}"


async def test_validation_error_lists_each_field() -> None:
    async with gateway_client() as (client, _):
        response = await client.post(
            "/api/sessions", json={"persona": "no spaces allowed", "title": 5}, headers=bearer()
        )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert PROBLEM_KEYS <= body.keys()
    assert {tuple(err["loc"]) for err in body["errors"]} == {
        ("body", "persona"),
        ("body", "title"),
    }
    assert all({"loc", "msg", "type"} <= err.keys() for err in body["errors"])


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "status=deleted", "persona=a%20b"])
async def test_bad_list_parameters_get_422(query: str) -> None:
    async with gateway_client() as (client, _):
        response = await client.get(f"/api/sessions?{query}", headers=bearer())
    assert response.status_code == 422
    assert response.json()["errors"]


async def test_malformed_uuid_in_path_gets_422() -> None:
    async with gateway_client() as (client, _):
        response = await client.get("/api/jobs/not-a-uuid", headers=bearer())
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["path", "job_id"]


async def test_request_id_is_generated_and_matches_the_body() -> None:
    async with gateway_client() as (client, _):
        first = await client.get(session_url(), headers=bearer())
        second = await client.get(session_url(), headers=bearer())
    assert first.status_code == 404
    assert first.headers["content-type"] == "application/problem+json"
    assert first.json()["request_id"] == first.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_request_id_sent_by_the_client_is_echoed_everywhere() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        ok = await client.get("/api/sessions", headers={**bearer(), "X-Request-ID": "req-42"})
        missing = await client.get(session_url(), headers={**bearer(), "X-Request-ID": "req-43"})
    assert ok.headers["x-request-id"] == "req-42"
    assert missing.headers["x-request-id"] == "req-43"
    assert missing.json()["request_id"] == "req-43"
    assert [meta.request_id for _, meta in bus.calls] == ["req-42", "req-43"]


async def test_unsafe_request_id_is_replaced() -> None:
    async with gateway_client() as (client, _):
        response = await client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert response.headers["x-request-id"].isalnum()


async def test_unknown_route_and_method_are_problems() -> None:
    async with gateway_client() as (client, _):
        missing = await client.get("/api/nothing-here")
        wrong_method = await client.delete("/api/jobs")
        not_allowed = await client.put("/healthz")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    assert wrong_method.status_code == 404
    assert not_allowed.status_code == 405
    assert not_allowed.headers["content-type"] == "application/problem+json"


async def test_content_over_the_byte_limit_gets_413() -> None:
    bus = FakeBus()
    async with gateway_client(bus, max_content_bytes=100) as (client, _):
        session = (await client.post("/api/sessions", json={}, headers=bearer())).json()
        url = f"/api/sessions/{session['id']}/messages"
        fits = await client.post(url, json={"content": "é" * 50}, headers=bearer())
        too_many_bytes = await client.post(url, json={"content": "é" * 51}, headers=bearer())
    assert fits.status_code == 202
    assert too_many_bytes.status_code == 413
    assert too_many_bytes.headers["content-type"] == "application/problem+json"
    assert len(bus.jobs) == 1 and len(bus.history.requested) == 1


async def test_body_far_over_the_limit_is_refused_unread() -> None:
    bus = FakeBus()
    async with gateway_client(bus, max_content_bytes=100) as (client, app):
        url = f"/api/sessions/{uuid.uuid4()}/messages"
        big = '{"content": "' + "a" * 10_000 + '"}'
        response = await client.post(
            url, content=big, headers={**bearer(), "Content-Type": "application/json"}
        )
    assert app.state.settings.max_body_bytes < len(big)
    assert response.status_code == 413
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert bus.calls == []


async def test_streamed_body_over_the_limit_gets_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"content": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    bus = FakeBus()
    async with gateway_client(bus, max_content_bytes=100) as (client, _):
        response = await client.post(
            f"/api/sessions/{uuid.uuid4()}/messages",
            content=chunks(),
            headers={**bearer(), "Content-Type": "application/json"},
        )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert bus.calls == []


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (BusTimeout("history.session.get gave no answer"), 504),
        (BusUnavailable("no service answers history.session.get"), 503),
        (BusProtocolError("bad answer"), 500),
    ],
)
async def test_bus_failures_map_to_statuses(failure: Exception, status: int) -> None:
    bus = FakeBus(failures={subjects.HISTORY_SESSION_GET: failure})
    async with gateway_client(bus) as (client, _):
        response = await client.get(session_url(), headers=bearer())
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert ("retry-after" in response.headers) == (status == 503)
    assert "history.session.get" not in response.text


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("not_found", 404),
        ("conflict", 409),
        ("invalid", 422),
        ("unavailable", 503),
        ("internal", 500),
        ("too_many_jobs", 429),
        ("rate_limited", 429),
    ],
)
async def test_reply_error_codes_map_to_statuses(code: Any, status: int) -> None:
    def refuse(_: object) -> SessionReply:
        return SessionReply(error=ReplyError(code=code, message="refused"))

    bus = FakeBus(extra={subjects.HISTORY_SESSION_GET: refuse})
    async with gateway_client(bus, retry_after_seconds=5) as (client, _):
        response = await client.get(session_url(), headers=bearer())
    assert response.status_code == status
    assert response.json()["status"] == status
    assert response.headers["content-type"] == "application/problem+json"
    # Without a retry_after of its own, a refusal to retry later says the configured one.
    assert response.headers.get("retry-after") == ("5" if status in (429, 503) else None)


@pytest.mark.parametrize(
    ("code", "seconds", "header"),
    [
        ("rate_limited", 12.2, "13"), ("rate_limited", 0.0, "1"), ("rate_limited", 59.0, "59"),
        # When a job ends nobody knows: the configured RETRY_AFTER_SECONDS.
        ("too_many_jobs", 12.2, "5"),
    ],
)
async def test_a_limit_says_when_to_retry_from_its_retry_after(
    code: Any, seconds: float, header: str
) -> None:
    def refuse(_: object) -> SessionReply:
        return SessionReply(error=ReplyError(code=code, message="slow down", retry_after=seconds))

    bus = FakeBus(extra={subjects.HISTORY_SESSION_GET: refuse})
    async with gateway_client(bus, retry_after_seconds=5) as (client, _):
        response = await client.get(session_url(), headers=bearer())
    assert response.status_code == 429
    assert response.headers["retry-after"] == header
    assert response.json()["detail"] == "slow down"


def test_from_reply_keeps_the_code_s_error_and_the_limit_s_retry_after() -> None:
    limit = from_reply(ReplyError(code="rate_limited", message="m", retry_after=3.5))
    assert isinstance(limit, TooManyRequests) and limit.retry_after == 3.5
    assert from_reply(ReplyError(code="too_many_jobs", message="m")).status == 429
    assert isinstance(from_reply(ReplyError(code="conflict", message="busy")), Conflict)
    assert from_reply(ReplyError(code="not_found", message="gone")).detail == "gone"


async def test_unexpected_exception_is_logged_once_and_hidden() -> None:
    secret = "password=hunter2 at db.internal"
    bus = FakeBus(failures={subjects.HISTORY_SESSION_GET: RuntimeError(secret)})
    async with gateway_client(bus) as (client, _):
        with structlog.testing.capture_logs() as logs:
            response = await client.get(
                session_url(), headers={**bearer(), "X-Request-ID": "bug-1"}
            )
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "bug-1"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == "bug-1"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    errors = [entry for entry in logs if entry["log_level"] in ("error", "critical")]
    assert len(errors) == 1
    exc = errors[0]["exc_info"]
    assert isinstance(exc, RuntimeError)
    assert exc.__traceback__ is not None
    assert errors[0]["request_id"] == "bug-1"


async def test_metrics_label_requests_by_route_template() -> None:
    async with gateway_client() as (client, _):
        await client.get(session_url(), headers=bearer())
        await client.get("/no/such/route")
        text = (await client.get("/metrics")).text
    assert (
        'chatbus_gateway_http_request_duration_seconds_count{method="GET",'
        'route="/api/sessions/{session_id}",status="404"} 1.0'
    ) in text
    assert 'route="<unmatched>",status="404"' in text


async def test_two_apps_keep_separate_metrics() -> None:
    async with gateway_client() as (first, _), gateway_client() as (second, _):
        await first.get("/healthz")
        text = (await second.get("/metrics")).text
    assert 'route="/healthz"' not in text
