"""The gateway's OpenAPI document, fuzzed in-process over the in-memory bus.

A quick first line in the unit tier: every answer of the routes, over
:class:`~tests.unit.test_gateway_fakes.FakeBus`, must be documented. The
real-bus run is ``tests/integration/test_gateway_fuzz.py``; the tests after the
fuzzing pin what it found.
"""

import uuid

import pytest
import schemathesis
from schemathesis import Case

from contracts import subjects
from contracts.base import BusError as ErrorReply
from contracts.base import Pong, utcnow
from contracts.tools import ToolList
from contracts.webhooks import (
    DeliveryPage,
    DeliveryReply,
    EndpointCreated,
    EndpointDeleted,
    EndpointPage,
    EndpointRecord,
)
from services.gateway.app import create_app
from tests.fuzzing import fuzz_config, validate
from tests.unit.test_gateway_fakes import SECRET, FakeBus, bearer, gateway_client, make_settings

CONFIG = fuzz_config(SECRET, max_examples=10)
PONGS = {
    subject: lambda _, name=name: Pong(service=name, instance="fake")
    for name, subject in (("agent", subjects.AGENT_PING), ("memory", subjects.MEMORY_PING))
}
# Services without a fake of their own answer as a service with nothing yet would.
EMPTY = {
    subjects.AGENT_TOOLS_LIST: lambda _: ToolList(),
    subjects.WEBHOOKS_ENDPOINT_LIST: lambda _: EndpointPage(),
    subjects.WEBHOOKS_ENDPOINT_CREATE: lambda body: EndpointCreated(
        endpoint=EndpointRecord(
            id=uuid.uuid4(), user_id=body.user_id, url=body.url, events=body.events,
            description=body.description, created_at=utcnow(),
        ),
        secret="whsec_fake",
    ),
    subjects.WEBHOOKS_ENDPOINT_DELETE: lambda _: EndpointDeleted(
        error=ErrorReply(code="not_found", message="no such endpoint")
    ),
    subjects.WEBHOOKS_DELIVERY_LIST: lambda _: DeliveryPage(
        error=ErrorReply(code="not_found", message="no such endpoint")
    ),
    subjects.WEBHOOKS_DELIVERY_RESEND: lambda _: DeliveryReply(
        error=ErrorReply(code="not_found", message="no such delivery")
    ),
}
APP = create_app(make_settings(max_wait_seconds=0.05), bus=FakeBus(extra={**PONGS, **EMPTY}))
# No agent runs here, so a job's event stream would never end: that route is fuzzed
# only against the whole stack.
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG).exclude(
    path="/api/jobs/{job_id}/events"
)


@SCHEMA.parametrize()
def test_each_operation_answers_as_documented(case: Case) -> None:
    validate(case, case.call())


@pytest.mark.parametrize(
    ("method", "path", "documented"),
    [
        ("OPTIONS", "/api/sessions", "GET, POST"),
        ("PUT", "/api/sessions/00000000-0000-0000-0000-000000000001", "DELETE, GET"),
        ("GET", "/api/jobs/00000000-0000-0000-0000-000000000001/cancel", "POST"),
    ],
)
async def test_405_names_every_method_of_the_resource(
    method: str, path: str, documented: str
) -> None:
    async with gateway_client() as (client, _):
        response = await client.request(method, path, headers=bearer())
    assert response.status_code == 405
    assert response.headers["allow"] == documented
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_body_that_is_not_utf8_is_a_documented_400() -> None:
    async with gateway_client() as (client, app):
        response = await client.post(
            "/api/sessions",
            content=b"\x80",
            headers={**bearer(), "content-type": "application/json"},
        )
        documented = app.openapi()["paths"]["/api/sessions"]["post"]["responses"]
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "400" in documented


@pytest.mark.parametrize("content", ["", " ", "\t\n", "\u3000", "\x1c"])
async def test_blank_content_is_refused_as_the_document_says(content: str) -> None:
    async with gateway_client() as (client, app):
        response = await client.post(
            "/api/sessions/00000000-0000-0000-0000-000000000001/messages",
            json={"content": content},
            headers=bearer(),
        )
        schema = app.openapi()["components"]["schemas"]["MessageCreate"]
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "content"]
    assert schema["properties"]["content"]["pattern"] == r"\S"
