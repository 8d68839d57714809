"""Settings of the webhooks service, read once from the environment."""

from pydantic import Field

from services.runtime.config import ServiceSettings


class Settings(ServiceSettings):
    """The database, how deliveries are sent and retried, and which URLs are allowed."""

    database_url: str = "sqlite+aiosqlite:///.chatbus/chatbus.db"
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)
    request_concurrency: int = Field(default=32, ge=1, le=1000)

    # Give up retrying a delivery this long after its event (timeouts, 5xx, 429).
    webhook_retry_hours: float = Field(default=24.0, gt=0, le=72)
    webhook_retry_initial: float = Field(default=5.0, gt=0, description="first backoff (s)")
    webhook_retry_max: float = Field(default=3600.0, gt=0, description="longest backoff (s)")
    webhook_timeout: float = Field(default=10.0, gt=0, le=60, description="per attempt (s)")
    # Deliveries being sent at once per replica, and at most this many to one endpoint, so a
    # slow receiver holds a few workers, never all of them.
    webhook_concurrency: int = Field(default=64, ge=1, le=1000)
    webhook_endpoint_concurrency: int = Field(default=4, ge=1, le=100)
    # Refuse endpoints on private, loopback and link-local addresses (no SSRF), unless true
    # (a local stack, tests).
    webhook_allow_private: bool = False
    webhook_max_endpoints: int = Field(default=20, ge=1, le=1000, description="per user")
    webhook_fetch_timeout: float = Field(default=1.0, gt=0, description="longest wait of a pull")

    @property
    def ack_wait(self) -> float:
        """Return the redelivery deadline of a delivery message: one attempt and slack."""
        return self.webhook_timeout + 20.0
