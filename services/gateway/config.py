"""Settings of the gateway, read once from the environment."""

from pydantic import Field, SecretStr

from contracts.history import MAX_CONTENT_CHARS
from services.runtime.config import ServiceSettings

DEFAULT_JWT_SECRET = "chatbus-dev-secret-change-me"


class Settings(ServiceSettings):
    """Where the gateway listens, how it checks tokens, and its request limits."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=0, le=65535)
    jwt_secret: SecretStr = SecretStr(DEFAULT_JWT_SECRET)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = Field(default=30.0, ge=0)
    max_content_bytes: int = Field(default=32_768, gt=0, le=MAX_CONTENT_CHARS)
    max_wait_seconds: float = Field(default=60.0, ge=0, le=60)
    ready_timeout: float = Field(default=1.0, gt=0, le=30)
    max_active_jobs_per_user: int = Field(default=8, ge=1, le=10_000)
    retry_after_seconds: int = Field(default=2, ge=0, le=3600)
    cancel_wait_seconds: float = Field(default=2.0, ge=0, le=30)

    @property
    def max_body_bytes(self) -> int:
        """Return the body size refused unparsed: the content JSON-escaped at worst, plus slack."""
        # A non-ASCII character escaped as \uXXXX takes up to 6 bytes per UTF-8 byte of content.
        return 6 * self.max_content_bytes + 4096

    @property
    def uses_default_secret(self) -> bool:
        """Tell whether the JWT secret is still the published development one."""
        return self.jwt_secret.get_secret_value() == DEFAULT_JWT_SECRET
