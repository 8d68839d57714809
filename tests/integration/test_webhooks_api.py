"""Webhooks through the gateway's REST API, and alongside the real agent.

A receiver that hangs must delay neither a job's completion nor another receiver.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from services.gateway.app import create_app as create_gateway
from services.gateway.auth import mint_token
from services.gateway.config import Settings as GatewaySettings
from tests.integration.test_agent_stack import StartAgent, start_agent
from tests.integration.test_webhooks import StartHooks, backend, eventually, start_hooks

pytestmark = pytest.mark.integration
__all__ = ["backend", "start_agent", "start_hooks"]  # the fixtures, imported for pytest
SECRET = "webhooks-test-secret"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, user)}"}


@asynccontextmanager
async def gateway(nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_gateway(GatewaySettings(nats_url=nats_url, jwt_secret=SECRET))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield http


async def test_register_list_log_resend_and_delete_over_rest(start_hooks: StartHooks) -> None:
    hooks = await start_hooks()
    async with gateway(hooks.nats_url) as http:
        created = await http.post(
            "/api/webhooks", headers=bearer("u1"),
            json={"url": f"{hooks.receiver.url}/flaky", "events": ["job.completed"],
                  "description": "ci"},
        )
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["secret"].startswith("whsec_")
        assert endpoint["events"] == ["job.completed"] and endpoint["description"] == "ci"
        listed = (await http.get("/api/webhooks", headers=bearer("u1"))).json()
        assert [e["id"] for e in listed["items"]] == [endpoint["id"]]
        assert "secret" not in listed["items"][0] and listed["next_cursor"] is None
        assert (await http.get("/api/webhooks", headers=bearer("u2"))).json()["items"] == []

        await hooks.job_ended("completed")
        log_url = f"/api/webhooks/{endpoint['id']}/deliveries"

        async def deliveries(user: str = "u1") -> list[dict[str, Any]]:
            answer = await http.get(log_url, headers=bearer(user))
            assert answer.status_code == 200, answer.text
            items: list[dict[str, Any]] = answer.json()["items"]
            return items

        [delivery] = await eventually(
            deliveries, lambda found: bool(found) and found[0]["status"] == "delivered"
        )
        assert delivery["attempts"] == 3 and delivery["event_type"] == "job.completed"
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]
        assert (await http.get(log_url, headers=bearer("u2"))).status_code == 404

        resent = await http.post(
            f"{log_url}/{delivery['id']}/resend", headers=bearer("u1")
        )
        assert resent.status_code == 202, resent.text
        assert resent.json()["resend_of"] == delivery["id"]
        found = await eventually(
            deliveries, lambda found: len(found) == 2 and found[0]["status"] == "delivered"
        )
        assert found[0]["id"] == resent.json()["id"]
        accepted = hooks.receiver.accepted("/flaky")
        assert len(accepted) == 2  # the event, then its resend: one id, both signed
        assert accepted[0].headers["webhook-id"] == accepted[1].headers["webhook-id"]
        for request in accepted:
            Webhook(endpoint["secret"]).verify(request.body, request.headers)

        assert (await http.delete(f"/api/webhooks/{endpoint['id']}",
                                  headers=bearer("u2"))).status_code == 404
        assert (await http.delete(f"/api/webhooks/{endpoint['id']}",
                                  headers=bearer("u1"))).status_code == 204
        assert (await http.get(log_url, headers=bearer("u1"))).status_code == 404

        bad = await http.post("/api/webhooks", headers=bearer("u1"),
                              json={"url": "ftp://example.com/x", "events": ["job.failed"]})
        assert bad.status_code == 422 and "http" in bad.json()["detail"]
        unknown = await http.post("/api/webhooks", headers=bearer("u1"),
                                  json={"url": hooks.receiver.url, "events": ["job.started"]})
        assert unknown.status_code == 422


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://[::1]/hook",
            "http://localhost/hook", "http://169.254.169.254/latest/meta-data"],
)
async def test_a_private_address_is_refused_unless_allowed(
    start_hooks: StartHooks, url: str
) -> None:
    hooks = await start_hooks(webhook_allow_private=False)
    async with gateway(hooks.nats_url) as http:
        refused = await http.post(
            "/api/webhooks", headers=bearer("u1"), json={"url": url, "events": ["job.failed"]}
        )
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert "WEBHOOK_ALLOW_PRIVATE" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "url"]


async def test_a_hanging_receiver_delays_neither_jobs_nor_other_receivers(
    start_agent: StartAgent, start_hooks: StartHooks
) -> None:
    stack = await start_agent()
    hooks = await start_hooks(webhook_timeout=5.0)
    hang = await hooks.register("/hang")
    ok = await hooks.register("/ok")
    assert hang.endpoint is not None and ok.endpoint is not None

    started = time.monotonic()
    states = await asyncio.gather(
        *[stack.final_state((await stack.submit(f"hello {n}")).job_id) for n in range(3)]
    )
    finished = time.monotonic() - started
    assert all(state.status == "completed" for state in states)
    assert finished < 4.0  # the hanging receiver (5 s per try) is nowhere on the job's path

    await eventually(lambda: asyncio.sleep(0, hooks.receiver.accepted("/ok")),
                     lambda found: len(found) == 3)
    told = time.monotonic() - started
    assert told < 4.0, "the ok receiver waited for the hanging one"
    assert hooks.receiver.at("/hang") == []  # still hanging: no answer recorded yet
    pending = await hooks.deliveries(hang.endpoint.id)
    assert {d.status for d in pending} == {"pending"}
