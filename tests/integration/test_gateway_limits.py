"""Request limits a gateway enforces itself: body and content size, page sizes.

The per-user limits (messages a minute, jobs queued or running) are history's, checked
in the append: ``test_gateway_admission.py`` tests them across replicas.
"""

from collections.abc import AsyncIterator

import httpx
import pytest

from contracts.history import MAX_PAGE
from services.gateway.app import create_app
from tests.integration.test_gateway_auth_jwks import serve
from tests.unit.test_gateway_fakes import FakeBus, bearer, gateway_client, make_settings

pytestmark = pytest.mark.integration


async def new_session(client: httpx.AsyncClient, user: str) -> str:
    answer = await client.post("/api/sessions", json={}, headers=bearer(user))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


@pytest.mark.parametrize(
    "path",
    ["/api/sessions", "/api/sessions/{sid}/messages", "/api/history", "/api/memories"],
)
async def test_every_list_endpoint_takes_limit_1_to_200_only(path: str) -> None:
    async with gateway_client() as (client, _):
        url = path.format(sid=await new_session(client, "alice"))
        for limit in ("0", "-1", str(MAX_PAGE + 1), "many", "1.5"):
            answer = await client.get(url, params={"limit": limit}, headers=bearer())
            assert answer.status_code == 422, (limit, answer.text)
            assert answer.json()["errors"][0]["loc"] == ["query", "limit"]
        for limit in ("1", str(MAX_PAGE)):
            assert (await client.get(url, params={"limit": limit}, headers=bearer())).is_success


async def test_body_and_content_limits_over_a_real_http_server() -> None:
    bus = FakeBus()
    app = create_app(make_settings(max_content_bytes=100), bus=bus)
    limit = app.state.settings.max_body_bytes
    async with serve(app) as base, httpx.AsyncClient(base_url=base, headers=bearer()) as http:
        session = (await http.post("/api/sessions", json={})).json()["id"]
        url = f"/api/sessions/{session}/messages"

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"content": "'
            for _ in range(limit // 1000 + 1):
                yield b"a" * 1000
            yield b'"}'

        declared = await http.post(
            url, content=b'{"content": "' + b"a" * limit + b'"}',
            headers={"Content-Type": "application/json"},
        )
        json_type = {"Content-Type": "application/json"}
        streamed = await http.post(url, content=chunks(), headers=json_type)
        too_long = await http.post(url, json={"content": "é" * 51})
        fits = await http.post(url, json={"content": "é" * 50})
    assert [declared.status_code, streamed.status_code, too_long.status_code] == [413, 413, 413]
    assert all(
        a.headers["content-type"] == "application/problem+json"
        for a in (declared, streamed, too_long)
    )
    assert fits.status_code == 202
    assert len(bus.history.requested) == 1
