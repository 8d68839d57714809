"""Bearer-token checks of the gateway: who gets a 401, and mint_token's round trip."""

import time

import jwt
import pytest

from services.gateway.auth import InvalidToken, mint_token, verify_token
from tests.unit.test_gateway_fakes import SECRET, bearer, gateway_client

SESSIONS = "/api/sessions"


def test_mint_token_round_trip() -> None:
    token = mint_token(SECRET, "alice", ttl_seconds=60, audience="authenticated")
    user = verify_token(token, SECRET, audience="authenticated")
    assert user.id == "alice"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["exp"] - claims["iat"] == 60


def test_verify_refuses_a_token_without_exp() -> None:
    token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET)


def test_verify_honours_leeway() -> None:
    token = mint_token(SECRET, "alice", ttl_seconds=-10)
    assert verify_token(token, SECRET, leeway=30).id == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, SECRET, leeway=0)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer"}, id="empty"),
        pytest.param({"Authorization": "Bearer not.a.jwt"}, id="malformed"),
        pytest.param({"Authorization": "Basic YWxpY2U6cHc="}, id="other-scheme"),
        pytest.param(bearer(ttl_seconds=-120), id="expired"),
        pytest.param(bearer(secret="another-secret-that-is-long-enough-too"), id="wrong-secret"),
        pytest.param(
            {
                "Authorization": "Bearer "
                + jwt.encode(
                    {"sub": "alice", "exp": int(time.time()) + 60}, "x" * 64, algorithm="HS512"
                )
            },
            id="wrong-algorithm",
        ),
        pytest.param(
            {
                "Authorization": "Bearer "
                + jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
            },
            id="no-sub",
        ),
    ],
)
async def test_bad_tokens_get_401_problem(headers: dict[str, str]) -> None:
    async with gateway_client() as (client, _):
        response = await client.get(SESSIONS, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["status"] == 401
    assert body["request_id"] == response.headers["x-request-id"]


async def test_valid_token_is_accepted() -> None:
    async with gateway_client() as (client, _):
        response = await client.get(SESSIONS, headers=bearer())
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_audience_is_checked_when_configured() -> None:
    async with gateway_client(jwt_audience="authenticated") as (client, _):
        right = await client.get(SESSIONS, headers=bearer(audience="authenticated"))
        wrong = await client.get(SESSIONS, headers=bearer(audience="somebody-else"))
        missing = await client.get(SESSIONS, headers=bearer())
    assert right.status_code == 200
    assert wrong.status_code == 401
    assert missing.status_code == 401


async def test_audience_is_ignored_when_not_configured() -> None:
    async with gateway_client() as (client, _):
        response = await client.get(SESSIONS, headers=bearer(audience="authenticated"))
    assert response.status_code == 200


async def test_issuer_is_checked_when_configured() -> None:
    issued = jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 60, "iss": "https://auth.example"},
        SECRET,
        algorithm="HS256",
    )
    async with gateway_client(jwt_issuer="https://auth.example") as (client, _):
        right = await client.get(SESSIONS, headers={"Authorization": f"Bearer {issued}"})
        wrong = await client.get(SESSIONS, headers=bearer())
    assert right.status_code == 200
    assert wrong.status_code == 401


async def test_operations_endpoints_need_no_token() -> None:
    async with gateway_client() as (client, _):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200
