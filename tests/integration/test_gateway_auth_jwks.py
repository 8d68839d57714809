"""The gateway fetching RS256/ES256 keys over HTTP from a JWKS served by this test (Supabase-like).

The JWKS endpoint is a small Starlette app under uvicorn on a free loopback
port; the gateway reads it with its real HTTP client. The key cache runs on a
hand-moved clock, so TTLs and the refresh floor are crossed without sleeping.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from services.gateway.auth import TokenVerifier
from services.launcher.natsserver import free_port
from tests.unit.test_gateway_auth import ES, RS, Clock, Signer, forge, jwks
from tests.unit.test_gateway_fakes import SECRET, bearer, gateway_client

pytestmark = pytest.mark.integration
JWKS_PATH = "/auth/v1/.well-known/jwks.json"
AUD = "authenticated"
SESSIONS = "/api/sessions"


@asynccontextmanager
async def serve(app: ASGIApp, port: int | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app on 127.0.0.1 inside this event loop; yield its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError(f"the test server on port {port} stopped while starting")
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class JwksServer:
    """What the served JWKS endpoint publishes, and how often it was fetched."""

    document: dict[str, Any] = field(default_factory=lambda: jwks(RS, ES))
    fetches: int = 0

    def app(self) -> Starlette:
        async def keys(_: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse(self.document, headers={"Cache-Control": "max-age=600"})

        return Starlette(routes=[Route(JWKS_PATH, keys)])


@dataclass
class Gateway:
    """A gateway over the fake bus whose key cache reads the served JWKS on a test clock."""

    client: httpx.AsyncClient
    app: FastAPI
    clock: Clock

    async def sessions(self, token: str) -> httpx.Response:
        return await self.client.get(SESSIONS, headers={"Authorization": f"Bearer {token}"})


@asynccontextmanager
async def gateway(jwks_url: str, **settings: Any) -> AsyncIterator[Gateway]:
    values = {"jwt_jwks_url": jwks_url, "jwt_audience": AUD, "jwt_issuer": None, **settings}
    async with gateway_client(**values) as (client, app):
        clock = Clock()
        app.state.verifier = TokenVerifier.from_settings(app.state.settings, clock=clock)
        try:
            yield Gateway(client, app, clock)
        finally:
            await app.state.verifier.jwks.aclose()


@pytest.fixture
async def keys() -> AsyncIterator[tuple[JwksServer, str]]:
    server = JwksServer()
    async with serve(server.app()) as base:
        yield server, f"{base}{JWKS_PATH}"


async def test_rs256_and_es256_tokens_are_accepted(keys: tuple[JwksServer, str]) -> None:
    server, url = keys
    issuer = url.removesuffix("/.well-known/jwks.json")
    async with gateway(url, jwt_issuer=issuer) as gw:
        rs_token = RS.token("rsa-user", aud=AUD, iss=issuer)
        es_token = ES.token("ec-user", aud=AUD, iss=issuer)
        created = await gw.client.post(
            SESSIONS, json={}, headers={"Authorization": f"Bearer {rs_token}"}
        )
        mine = await gw.sessions(rs_token)
        theirs = await gw.sessions(es_token)
    assert created.status_code == 201, created.text
    assert [s["id"] for s in mine.json()["items"]] == [created.json()["id"]]
    assert theirs.status_code == 200 and theirs.json()["items"] == []
    assert server.fetches == 1


async def test_rotation_refreshes_once_and_unknown_kids_get_401(
    keys: tuple[JwksServer, str],
) -> None:
    server, url = keys
    server.document = jwks(RS)
    rotated = Signer("ES256", "ec-rotated", n=5)
    async with gateway(url, jwt_jwks_min_refresh_seconds=30, jwt_jwks_ttl_seconds=600) as gw:
        assert (await gw.sessions(RS.token(aud=AUD))).status_code == 200
        server.document = jwks(RS, rotated)  # Supabase publishes the new key, then signs with it
        gw.clock.advance(30)
        assert (await gw.sessions(rotated.token(aud=AUD))).status_code == 200
        assert server.fetches == 2
        for n in range(20):  # a flood of made-up kids: refused, and the URL is left alone
            bogus = await gw.sessions(RS.token(aud=AUD, kid=f"bogus-{n}"))
            assert bogus.status_code == 401
        assert bogus.headers["content-type"] == "application/problem+json"
        assert "no signing key" in bogus.json()["detail"]
        assert server.fetches == 2
        gw.clock.advance(30)
        assert (await gw.sessions(RS.token(aud=AUD, kid="bogus-late"))).status_code == 401
        assert server.fetches == 3  # refreshed once, still unknown: 401
        server.document = jwks(rotated)  # the old key is revoked
        gw.clock.advance(600)
        assert (await gw.sessions(RS.token(aud=AUD))).status_code == 401
        assert (await gw.sessions(rotated.token(aud=AUD))).status_code == 200
    assert server.fetches == 4


async def test_claims_are_checked_with_leeway(keys: tuple[JwksServer, str]) -> None:
    _, url = keys
    async with gateway(url, jwt_issuer="https://ref.supabase.co/auth/v1", jwt_leeway=30) as gw:
        iss = "https://ref.supabase.co/auth/v1"
        answers = {
            "good": await gw.sessions(ES.token(aud=AUD, iss=iss)),
            "expired-within-leeway": await gw.sessions(ES.token(ttl=-20, aud=AUD, iss=iss)),
            "expired": await gw.sessions(ES.token(ttl=-60, aud=AUD, iss=iss)),
            "wrong-aud": await gw.sessions(RS.token(aud="anon", iss=iss)),
            "no-aud": await gw.sessions(RS.token(iss=iss)),
            "wrong-iss": await gw.sessions(RS.token(aud=AUD, iss="https://other.supabase.co")),
            "not-yet-valid": await gw.sessions(
                RS.token(aud=AUD, iss=iss, nbf=int(time.time()) + 120)
            ),
        }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "good": 200,
        "expired-within-leeway": 200,
        "expired": 401,
        "wrong-aud": 401,
        "no-aud": 401,
        "wrong-iss": 401,
        "not-yet-valid": 401,
    }
    assert answers["expired"].json()["detail"] == "token expired"


async def test_forged_algorithms_are_refused(keys: tuple[JwksServer, str]) -> None:
    _, url = keys
    claims = {"sub": "mallory", "aud": AUD, "exp": int(time.time()) + 600}
    forged = {
        "hs256-with-public-key": forge({"alg": "HS256", "kid": RS.kid}, claims, RS.public_pem()),
        "none": forge({"alg": "none", "kid": RS.kid}, claims, None),
        "rs256-header-on-ec-key": Signer("RS256", ES.kid, n=8).token(aud=AUD),
    }
    async with gateway(url) as gw:
        statuses = {name: (await gw.sessions(token)).status_code for name, token in forged.items()}
        assert (await gw.sessions(RS.token(aud=AUD))).status_code == 200
    assert statuses == dict.fromkeys(forged, 401)


async def test_unreachable_jwks_is_503_logged_once_then_recovers() -> None:
    port = free_port()  # nothing listens here yet
    server = JwksServer()
    url = f"http://127.0.0.1:{port}{JWKS_PATH}"
    async with gateway(url, jwt_audience=None, jwt_jwks_min_refresh_seconds=30) as gw:
        with structlog.testing.capture_logs() as logs:
            down = [await gw.sessions(RS.token())]
            gw.clock.advance(10)
            down.append(await gw.sessions(ES.token()))
            gw.clock.advance(20)
            down.append(await gw.sessions(ES.token()))
            hs256 = await gw.client.get(SESSIONS, headers=bearer(secret=SECRET))
            async with serve(server.app(), port):
                gw.clock.advance(30)
                back = await gw.sessions(RS.token())
    assert [r.status_code for r in down] == [503, 503, 503]
    assert [r.headers["retry-after"] for r in down] == ["30", "20", "30"]
    assert all(r.headers["content-type"] == "application/problem+json" for r in down)
    assert "signing keys" in down[0].json()["detail"]
    assert hs256.status_code == 200  # HS256 needs no JWKS
    assert back.status_code == 200
    events = [entry["event"] for entry in logs]
    assert events.count("JWKS unreachable; known keys stay in use") == 1
    assert events.count("JWKS reachable again") == 1
