"""Settings of the history service."""

from pydantic import Field

from services.runtime.config import ServiceSettings


class Settings(ServiceSettings):
    """Bus settings plus where and how to reach the database."""

    database_url: str = "sqlite+aiosqlite:///.chatbus/chatbus.db"
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)
    # Requests handled at once; each holds at most one database connection.
    request_concurrency: int = Field(default=32, ge=1, le=1000)
    # Publishing an event after commit must not hold a request for long.
    event_publish_timeout: float = Field(default=2.0, gt=0, le=60)
