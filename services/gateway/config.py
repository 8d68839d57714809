"""Settings of the gateway, read once from the environment."""

from typing import Self

from pydantic import Field, SecretStr, model_validator

from contracts.history import MAX_CONTENT_CHARS
from services.runtime.config import ServiceSettings

DEFAULT_JWT_SECRET = "chatbus-dev-secret-change-me"


class Settings(ServiceSettings):
    """Where the gateway listens, how it checks tokens, and its request limits."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=0, le=65535)
    # HS256 secret; empty turns HS256 off. Left at the development default while a JWKS URL
    # is set, HS256 is off too: a published secret must never sit beside production keys.
    jwt_secret: SecretStr = SecretStr(DEFAULT_JWT_SECRET)
    jwt_jwks_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    jwt_jwks_ttl_seconds: float = Field(default=600.0, gt=0, le=86_400)
    jwt_jwks_min_refresh_seconds: float = Field(default=30.0, gt=0, le=3600)
    jwt_jwks_timeout: float = Field(default=3.0, gt=0, le=30)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = Field(default=30.0, ge=0, le=600)
    max_content_bytes: int = Field(default=32_768, gt=0, le=MAX_CONTENT_CHARS)
    max_wait_seconds: float = Field(default=60.0, ge=0, le=60)
    ready_timeout: float = Field(default=1.0, gt=0, le=30)
    max_active_jobs_per_user: int = Field(default=8, ge=1, le=10_000)
    max_messages_per_minute: int = Field(default=60, ge=0, le=1000)  # 0: no limit
    retry_after_seconds: int = Field(default=2, ge=0, le=3600)
    cancel_wait_seconds: float = Field(default=2.0, ge=0, le=30)

    @model_validator(mode="after")
    def _some_key_verifies_tokens(self) -> Self:
        if self.hs256_secret is None and self.jwt_jwks_url is None:
            raise ValueError(
                "no way to verify tokens: set JWT_SECRET (HS256) or JWT_JWKS_URL (or both)"
            )
        return self

    @property
    def max_body_bytes(self) -> int:
        """Return the body size refused unparsed: the content JSON-escaped at worst, plus slack."""
        # A non-ASCII character escaped as \uXXXX takes up to 6 bytes per UTF-8 byte of content.
        return 6 * self.max_content_bytes + 4096

    @property
    def uses_default_secret(self) -> bool:
        """Tell whether HS256 tokens are checked with the published development secret."""
        return self.hs256_secret == DEFAULT_JWT_SECRET

    @property
    def hs256_secret(self) -> str | None:
        """Return the secret HS256 tokens are checked with, or None when HS256 is off."""
        secret = self.jwt_secret.get_secret_value()
        if not secret or (self.jwt_jwks_url is not None and secret == DEFAULT_JWT_SECRET):
            return None
        return secret
