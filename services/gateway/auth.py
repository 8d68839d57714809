"""Bearer tokens: JWTs whose ``sub`` is the user id, HS256 with a secret or keys from a JWKS URL.

The key decides the algorithm: an ``HS256`` token is checked with the secret
only, any other token with the JWKS key its ``kid`` names and that key's own
algorithm, so a token cannot pick how it is verified (no ``none``, no HS256
signed with a public key). Errors::

    InvalidToken      401: missing, malformed, expired, wrongly signed, unknown key
    KeysUnavailable   503: the token needs the JWKS and the JWKS cannot be fetched now
"""

import asyncio
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import structlog
from jwt.warnings import InsecureKeyLengthWarning

from services.gateway.config import Settings

ALGORITHM = "HS256"
# Algorithms a JWKS key may carry; symmetric keys are never taken from a URL.
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_USER_ID = 256  # the bus contracts accept user ids up to this length
MAX_JWKS_BYTES = 1 << 20
log = structlog.get_logger("chatbus.gateway.auth")


class InvalidToken(Exception):
    """The token is missing, malformed, expired, or not signed by a key we trust."""


class KeysUnavailable(Exception):
    """The token's key is not known and the JWKS could not be fetched; retry later."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass(frozen=True)
class User:
    """The authenticated caller."""

    id: str


def mint_token(
    secret: str,
    user_id: str,
    ttl_seconds: int = 86400,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """Sign an HS256 token for ``user_id`` that expires after ``ttl_seconds``."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    with warnings.catch_warnings():
        # The short development secret is announced once at start; not on every token.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=ALGORITHM)


class JwksCache:
    """The signing keys of a JWKS URL by ``kid``: fetched with a TTL, refreshed on unknown kids.

    At most one fetch runs at a time, and a new one starts at most once per
    ``min_refresh`` seconds, so a flood of made-up kids cannot hammer the URL.
    Keys already known stay in use while the URL is unreachable.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        min_refresh: float,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refresh = min_refresh
        self.timeout = timeout
        self.transport = transport
        self.clock = clock
        self.keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._failure: str | None = None
        self._refresh: asyncio.Task[None] | None = None

    async def get(self, kid: str) -> jwt.PyJWK:
        """Return the key ``kid`` names; raise :class:`InvalidToken` or :class:`KeysUnavailable`."""
        key = self.keys.get(kid)
        if key is not None and (self._fresh() or self._refreshing()):
            return key  # while a refresh runs, a known key need not wait for it
        if self._refreshing() or self._may_refresh():
            await self._refreshed()
        elif key is not None:
            return key  # stale, but the last fetch failed a moment ago
        if (key := self.keys.get(kid)) is not None:
            return key
        if self._failure is not None:
            raise KeysUnavailable(
                f"the signing keys cannot be fetched: {self._failure}", self._retry_after()
            )
        raise InvalidToken(f"invalid token: no signing key {kid!r}")

    async def aclose(self) -> None:
        """Stop a fetch in flight."""
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self.clock() - self._fetched_at < self.ttl

    def _refreshing(self) -> bool:
        return self._refresh is not None and not self._refresh.done()

    def _may_refresh(self) -> bool:
        return self._attempted_at is None or self.clock() - self._attempted_at >= self.min_refresh

    def _retry_after(self) -> int:
        waited = 0.0 if self._attempted_at is None else self.clock() - self._attempted_at
        return max(1, math.ceil(self.min_refresh - waited))

    async def _refreshed(self) -> None:
        if not self._refreshing():
            self._attempted_at = self.clock()
            self._refresh = asyncio.create_task(self._fetch())
        assert self._refresh is not None
        # A caller that gives up must not cancel the fetch the others wait for.
        await asyncio.shield(self._refresh)

    async def _fetch(self) -> None:
        try:
            async with httpx.AsyncClient(transport=self.transport, timeout=self.timeout) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError(f"the JWKS is over {MAX_JWKS_BYTES} bytes")
            keys = _signing_keys(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if self._failure is None:  # once per outage, not once per token
                log.warning("JWKS unreachable; known keys stay in use", url=self.url, error=reason)
            self._failure = reason
            return
        if self._failure is not None:
            log.info("JWKS reachable again", url=self.url)
        if keys.keys() != self.keys.keys():
            log.info("JWKS signing keys loaded", url=self.url, kids=sorted(keys))
        self.keys, self._fetched_at, self._failure = keys, self.clock(), None


def _signing_keys(document: Any) -> dict[str, jwt.PyJWK]:
    """Return the usable asymmetric signing keys of a JWKS document by kid."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document: no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(kid := entry.get("kid"), str):
            continue
        if entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            log.warning("JWKS key skipped", kid=kid, error=str(exc))
            continue
        if key.algorithm_name in ASYMMETRIC:
            keys[kid] = key
    return keys


class TokenVerifier:
    """Check bearer tokens against the HS256 secret and the JWKS keys the settings name."""

    def __init__(
        self,
        *,
        secret: str | None,
        jwks: JwksCache | None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        self.secret = secret
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    @classmethod
    def from_settings(
        cls, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> "TokenVerifier":
        """Build the verifier the settings describe."""
        jwks = None
        if settings.jwt_jwks_url is not None:
            jwks = JwksCache(
                settings.jwt_jwks_url,
                ttl=settings.jwt_jwks_ttl_seconds,
                min_refresh=settings.jwt_jwks_min_refresh_seconds,
                timeout=settings.jwt_jwks_timeout,
                clock=clock,
            )
        return cls(
            secret=settings.hs256_secret,
            jwks=jwks,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
        )

    async def verify(self, token: str) -> User:
        """Return the user a valid token names, or raise one of the module's errors."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {exc}") from exc
        alg, kid = header.get("alg"), header.get("kid")
        key: str | jwt.PyJWK
        if alg == ALGORITHM and self.secret is not None:
            key, algorithm = self.secret, ALGORITHM
        elif alg in ASYMMETRIC and self.jwks is not None:
            if not isinstance(kid, str) or not kid:
                raise InvalidToken("invalid token: no key id (kid)")
            key = await self.jwks.get(kid)
            algorithm = key.algorithm_name
        else:
            raise InvalidToken(f"invalid token: algorithm {alg!r} is not accepted")
        return self._decode(token, key, algorithm)

    def _decode(self, token: str, key: str | jwt.PyJWK, algorithm: str) -> User:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={
                        "require": ["exp", "sub"],
                        "verify_aud": self.audience is not None,
                    },
                )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_USER_ID:
            raise InvalidToken("invalid token: bad subject")
        return User(id=sub)
