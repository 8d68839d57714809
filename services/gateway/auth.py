"""Bearer tokens: HS256 JWTs whose ``sub`` is the user id."""

import time
import warnings
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

ALGORITHM = "HS256"
MAX_USER_ID = 256  # the bus contracts accept user ids up to this length


class InvalidToken(Exception):
    """The token is missing, malformed, expired, or not signed with our secret."""


@dataclass(frozen=True)
class User:
    """The authenticated caller."""

    id: str


def mint_token(
    secret: str, user_id: str, ttl_seconds: int = 86400, audience: str | None = None
) -> str:
    """Sign a token for ``user_id`` that expires after ``ttl_seconds``."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if audience is not None:
        claims["aud"] = audience
    with warnings.catch_warnings():
        # The short development secret is announced once at start; not on every token.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(
    token: str,
    secret: str,
    *,
    audience: str | None = None,
    issuer: str | None = None,
    leeway: float = 0.0,
) -> User:
    """Return the user a valid token names, or raise :class:`InvalidToken`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=issuer,
                leeway=leeway,
                options={"require": ["exp", "sub"], "verify_aud": audience is not None},
            )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from exc
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_USER_ID:
        raise InvalidToken("invalid token: bad subject")
    return User(id=sub)
