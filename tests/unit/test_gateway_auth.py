"""Bearer-token checks: HS256 with the secret, RS256/ES256 from a JWKS, who gets a 401 or a 503.

Also holds the signing helpers (:class:`Signer`, :class:`Clock`) the JWKS integration test uses.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from services.gateway.auth import (
    InvalidToken,
    JwksCache,
    KeysUnavailable,
    TokenVerifier,
    mint_token,
)
from services.gateway.config import DEFAULT_JWT_SECRET
from tests.unit.test_gateway_fakes import SECRET, bearer, gateway_client, make_settings

SESSIONS = "/api/sessions"
JWKS_URL = "https://auth.example/auth/v1/.well-known/jwks.json"
ISSUER = "https://auth.example/auth/v1"


# ---- signing helpers (shared with tests/integration/test_gateway_auth_jwks.py) ------------


@cache
def private_key(kind: str, n: int = 0) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Return a generated key, the same one for the same (kind, n) within a run."""
    if kind == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Signer:
    """A private key with its kid: signs tokens, publishes its public JWK."""

    alg: str
    kid: str
    n: int = 0

    @property
    def key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        return private_key(self.alg, self.n)

    def jwk(self) -> dict[str, Any]:
        """Return the public key as a JWK, as Supabase publishes it."""
        public = self.key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig", "key_ops": ["verify"]}

    def token(
        self, user: str = "alice", *, ttl: int = 3600, kid: str | None = None, **claims: Any
    ) -> str:
        """Sign a token for ``user`` expiring in ``ttl`` seconds (negative: already expired)."""
        now = int(time.time())
        body = {"sub": user, "iat": now - 5, "exp": now + ttl, **claims}
        return jwt.encode(body, self.key, algorithm=self.alg, headers={"kid": kid or self.kid})

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def jwks(*signers: Signer) -> dict[str, Any]:
    """Return the JWKS document publishing the signers' public keys."""
    return {"keys": [s.jwk() for s in signers]}


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """Build a token by hand: HMAC-SHA256 with ``key``, or no signature at all."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(claims).encode())}"
    signature = b""
    if key is not None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


@dataclass
class Clock:
    """A monotonic clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


RS = Signer("RS256", "rsa-1")
ES = Signer("ES256", "ec-1")


# ---- an in-memory JWKS endpoint ------------------------------------------------------------


@dataclass
class JwksEndpoint:
    """Serve a JWKS document through an httpx transport; count fetches, fail or stall on demand."""

    document: Any = field(default_factory=lambda: jwks(RS, ES))
    status: int = 200
    fetches: int = 0
    gate: asyncio.Event | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return httpx.Response(self.status, text="down")
        return httpx.Response(200, json=self.document)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def cache(self, clock: Clock, *, ttl: float = 600, min_refresh: float = 30) -> JwksCache:
        return JwksCache(
            JWKS_URL,
            ttl=ttl,
            min_refresh=min_refresh,
            timeout=2,
            transport=self.transport(),
            clock=clock,
        )


def verifier(
    endpoint: JwksEndpoint, clock: Clock, *, secret: str | None = None, **kwargs: Any
) -> TokenVerifier:
    return TokenVerifier(secret=secret, jwks=endpoint.cache(clock), **kwargs)


# ---- HS256 ----------------------------------------------------------------------------------


async def test_mint_token_round_trip() -> None:
    token = mint_token(SECRET, "alice", ttl_seconds=60, audience="authenticated", issuer=ISSUER)
    check = TokenVerifier(secret=SECRET, jwks=None, audience="authenticated", issuer=ISSUER)
    assert (await check.verify(token)).id == "alice"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["exp"] - claims["iat"] == 60
    assert claims["iss"] == ISSUER


async def test_verify_refuses_a_token_without_exp() -> None:
    token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="exp"):
        await TokenVerifier(secret=SECRET, jwks=None).verify(token)


async def test_verify_honours_leeway() -> None:
    token = mint_token(SECRET, "alice", ttl_seconds=-10)
    assert (await TokenVerifier(secret=SECRET, jwks=None, leeway=30).verify(token)).id == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        await TokenVerifier(secret=SECRET, jwks=None, leeway=0).verify(token)


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
        pytest.param(
            {"Authorization": "Bearer " + RS.token()}, id="rs256-without-jwks-configured"
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
    async with gateway_client(jwt_issuer=ISSUER) as (client, _):
        right = await client.get(SESSIONS, headers=bearer(issuer=ISSUER))
        wrong = await client.get(SESSIONS, headers=bearer(issuer="https://elsewhere"))
        missing = await client.get(SESSIONS, headers=bearer())
    assert right.status_code == 200
    assert wrong.status_code == 401
    assert missing.status_code == 401


async def test_operations_endpoints_need_no_token() -> None:
    async with gateway_client() as (client, _):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200


# ---- settings -------------------------------------------------------------------------------


def test_the_dev_secret_is_off_once_a_jwks_url_is_set() -> None:
    assert make_settings(jwt_secret=DEFAULT_JWT_SECRET).hs256_secret == DEFAULT_JWT_SECRET
    with_jwks = make_settings(jwt_secret=DEFAULT_JWT_SECRET, jwt_jwks_url=JWKS_URL)
    assert with_jwks.hs256_secret is None
    assert not with_jwks.uses_default_secret
    both = make_settings(jwt_jwks_url=JWKS_URL)
    assert both.hs256_secret == SECRET
    assert make_settings(jwt_secret="", jwt_jwks_url=JWKS_URL).hs256_secret is None


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"jwt_secret": ""}, id="no-secret-no-jwks"),
        pytest.param({"jwt_jwks_url": "ftp://keys.example/jwks"}, id="not-http"),
        pytest.param({"jwt_jwks_min_refresh_seconds": 0, "jwt_jwks_url": JWKS_URL}, id="no-floor"),
        pytest.param({"max_messages_per_minute": -1}, id="negative-rate"),
    ],
)
def test_settings_refuse_unsafe_values(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make_settings(**values)


# ---- JWKS: algorithms decided by the key ----------------------------------------------------


@pytest.mark.parametrize("signer", [RS, ES], ids=["RS256", "ES256"])
async def test_jwks_tokens_verify(signer: Signer) -> None:
    check = verifier(JwksEndpoint(), Clock(), audience="authenticated", issuer=ISSUER)
    token = signer.token("bob", aud="authenticated", iss=ISSUER)
    assert (await check.verify(token)).id == "bob"


async def test_hs256_signed_with_the_public_key_is_refused() -> None:
    claims = {"sub": "mallory", "exp": int(time.time()) + 60}
    forged = forge({"alg": "HS256", "typ": "JWT", "kid": RS.kid}, claims, RS.public_pem())
    with pytest.raises(InvalidToken, match="not accepted"):
        await verifier(JwksEndpoint(), Clock()).verify(forged)
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        await verifier(JwksEndpoint(), Clock(), secret=SECRET).verify(forged)


async def test_alg_none_is_refused() -> None:
    claims = {"sub": "mallory", "exp": int(time.time()) + 60}
    for header in ({"alg": "none"}, {"alg": "none", "kid": RS.kid}, {"alg": "None"}):
        with pytest.raises(InvalidToken, match="not accepted"):
            await verifier(JwksEndpoint(), Clock(), secret=SECRET).verify(
                forge(header, claims, None)
            )


async def test_a_token_cannot_choose_another_algorithm_for_a_key() -> None:
    # Signed RS256 by a key of its own, but naming the EC key: the EC key's ES256 decides.
    token = Signer("RS256", ES.kid, n=7).token()
    with pytest.raises(InvalidToken, match="alg"):
        await verifier(JwksEndpoint(), Clock()).verify(token)


async def test_a_signature_by_another_key_under_a_known_kid_is_refused() -> None:
    token = Signer("ES256", ES.kid, n=9).token()
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        await verifier(JwksEndpoint(), Clock()).verify(token)


async def test_jwks_tokens_check_exp_aud_iss_with_leeway() -> None:
    endpoint, clock = JwksEndpoint(), Clock()
    check = verifier(endpoint, clock, audience="authenticated", issuer=ISSUER, leeway=30)
    good = {"aud": "authenticated", "iss": ISSUER}
    assert (await check.verify(ES.token(ttl=-10, **good))).id == "alice"  # within leeway
    with pytest.raises(InvalidToken, match="expired"):
        await check.verify(ES.token(ttl=-60, **good))
    with pytest.raises(InvalidToken, match=r"(?i)audience"):
        await check.verify(ES.token(aud="anon", iss=ISSUER))
    with pytest.raises(InvalidToken, match=r"(?i)issuer"):
        await check.verify(ES.token(aud="authenticated", iss="https://evil.example/auth/v1"))
    with pytest.raises(InvalidToken, match="aud"):
        await check.verify(ES.token(iss=ISSUER))
    assert endpoint.fetches == 1


async def test_a_token_without_kid_is_refused() -> None:
    token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, RS.key, algorithm="RS256")
    with pytest.raises(InvalidToken, match="kid"):
        await verifier(JwksEndpoint(), Clock()).verify(token)


async def test_symmetric_and_encryption_keys_in_the_jwks_are_ignored() -> None:
    oct_key = {"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(b"s" * 32).decode()}
    enc_key = {**Signer("RS256", "enc-1", n=3).jwk(), "use": "enc"}
    odd = {"kty": "XX", "kid": "x"}
    endpoint = JwksEndpoint(document={"keys": [oct_key, enc_key, "junk", odd, ES.jwk()]})
    cache = endpoint.cache(Clock())
    assert (await TokenVerifier(secret=None, jwks=cache).verify(ES.token())).id == "alice"
    assert set(cache.keys) == {ES.kid}
    forged = forge({"alg": "HS256", "kid": "shared"}, {"sub": "x", "exp": 2**40}, b"s" * 32)
    with pytest.raises(InvalidToken, match="not accepted"):
        await TokenVerifier(secret=None, jwks=cache).verify(forged)


# ---- JWKS: caching, refresh, rotation, outages ---------------------------------------------


async def test_keys_are_cached_for_the_ttl_then_refetched() -> None:
    endpoint, clock = JwksEndpoint(), Clock()
    check = TokenVerifier(secret=None, jwks=endpoint.cache(clock, ttl=600))
    for _ in range(5):
        await check.verify(RS.token())
    assert endpoint.fetches == 1
    clock.advance(601)
    await check.verify(RS.token())
    assert endpoint.fetches == 2


async def test_rotation_new_kid_triggers_one_refresh() -> None:
    endpoint, clock = JwksEndpoint(document=jwks(RS)), Clock()
    check = TokenVerifier(secret=None, jwks=endpoint.cache(clock, min_refresh=30))
    await check.verify(RS.token())
    new = Signer("ES256", "ec-rotated", n=1)
    endpoint.document = jwks(RS, new)
    clock.advance(30)
    assert (await check.verify(new.token("carol"))).id == "carol"
    assert endpoint.fetches == 2


async def test_a_removed_key_is_refused_after_the_ttl() -> None:
    endpoint, clock = JwksEndpoint(document=jwks(RS, ES)), Clock()
    check = TokenVerifier(secret=None, jwks=endpoint.cache(clock, ttl=600))
    await check.verify(RS.token())
    endpoint.document = jwks(ES)
    clock.advance(601)
    with pytest.raises(InvalidToken, match="no signing key"):
        await check.verify(RS.token())


async def test_unknown_kids_refresh_at_most_once_per_interval() -> None:
    endpoint, clock = JwksEndpoint(), Clock()
    check = TokenVerifier(secret=None, jwks=endpoint.cache(clock, min_refresh=30))
    await check.verify(RS.token())
    for n in range(50):
        with pytest.raises(InvalidToken, match="no signing key"):
            await check.verify(RS.token(kid=f"made-up-{n}"))
    assert endpoint.fetches == 1  # the first load was the refresh of this interval
    clock.advance(30)
    for n in range(50):
        with pytest.raises(InvalidToken, match="no signing key"):
            await check.verify(RS.token(kid=f"made-up-later-{n}"))
    assert endpoint.fetches == 2


async def test_concurrent_requests_share_one_fetch() -> None:
    gate = asyncio.Event()
    endpoint, clock = JwksEndpoint(gate=gate), Clock()
    check = TokenVerifier(secret=None, jwks=endpoint.cache(clock))
    tokens = [RS.token(f"user-{n}") if n % 2 else ES.token(f"user-{n}") for n in range(20)]
    waiting = asyncio.gather(*(check.verify(t) for t in tokens))
    await asyncio.sleep(0)  # every verify is parked on the same fetch
    gate.set()
    users = await waiting
    assert [u.id for u in users] == [f"user-{n}" for n in range(20)]
    assert endpoint.fetches == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch() -> None:
    gate = asyncio.Event()
    endpoint, clock = JwksEndpoint(gate=gate), Clock()
    check = TokenVerifier(secret=None, jwks=endpoint.cache(clock))
    first = asyncio.create_task(check.verify(RS.token("first")))
    second = asyncio.create_task(check.verify(ES.token("second")))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert (await second).id == "second"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert endpoint.fetches == 1


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param({"status": 500}, id="http-500"),
        pytest.param({"document": ["not", "a", "jwks"]}, id="not-a-jwks"),
        pytest.param({"document": {"keys": "nope"}}, id="keys-not-a-list"),
    ],
)
async def test_jwks_outage_is_503_for_tokens_that_need_it_and_logged_once(
    breakage: dict[str, Any],
) -> None:
    endpoint, clock = JwksEndpoint(**breakage), Clock()
    check = TokenVerifier(secret=SECRET, jwks=endpoint.cache(clock, min_refresh=30))
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(KeysUnavailable) as first:
            await check.verify(RS.token())
        clock.advance(10)
        with pytest.raises(KeysUnavailable) as second:
            await check.verify(ES.token())
        clock.advance(25)
        with pytest.raises(KeysUnavailable):
            await check.verify(ES.token())
        # HS256 needs no JWKS: it keeps working through the outage.
        assert (await check.verify(mint_token(SECRET, "hs"))).id == "hs"
        endpoint.status, endpoint.document = 200, jwks(RS, ES)
        clock.advance(30)
        assert (await check.verify(ES.token("back"))).id == "back"
    assert first.value.retry_after == 30
    assert second.value.retry_after == 20
    assert endpoint.fetches == 3
    events = [entry["event"] for entry in logs]
    assert events.count("JWKS unreachable; known keys stay in use") == 1
    assert events.count("JWKS reachable again") == 1


async def test_known_keys_keep_working_while_the_jwks_is_down() -> None:
    endpoint, clock = JwksEndpoint(), Clock()
    check = TokenVerifier(secret=None, jwks=endpoint.cache(clock, ttl=600, min_refresh=30))
    await check.verify(RS.token())
    endpoint.status = 503
    clock.advance(601)
    assert (await check.verify(RS.token("still"))).id == "still"  # refresh failed: stale key
    assert (await check.verify(ES.token("known"))).id == "known"  # no new attempt yet
    with pytest.raises(KeysUnavailable):
        await check.verify(Signer("ES256", "brand-new", n=2).token())
    assert endpoint.fetches == 2


async def test_gateway_answers_503_with_retry_after_while_keys_cannot_be_fetched() -> None:
    endpoint, clock = JwksEndpoint(status=502), Clock()
    async with gateway_client(jwt_jwks_url=JWKS_URL) as (client, app):
        app.state.verifier = TokenVerifier(
            secret=SECRET, jwks=endpoint.cache(clock, min_refresh=30)
        )
        down = await client.get(SESSIONS, headers={"Authorization": f"Bearer {RS.token()}"})
        hs256 = await client.get(SESSIONS, headers=bearer())
        endpoint.status = 200
        clock.advance(30)
        back = await client.get(SESSIONS, headers={"Authorization": f"Bearer {RS.token()}"})
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/problem+json"
    assert down.headers["retry-after"] == "30"
    assert down.json()["request_id"] == down.headers["x-request-id"]
    assert hs256.status_code == 200
    assert back.status_code == 200

