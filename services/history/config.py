"""Settings of the history service."""

from pydantic import Field

from services.runtime.config import ServiceSettings


class Settings(ServiceSettings):
    """Bus settings plus the database, the read cache and the event outbox."""

    database_url: str = "sqlite+aiosqlite:///.chatbus/chatbus.db"
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)
    # Requests handled at once; each holds at most one database connection.
    request_concurrency: int = Field(default=32, ge=1, le=1000)
    # Publishing an event must not hold the relay for long.
    event_publish_timeout: float = Field(default=2.0, gt=0, le=60)

    # Unset: an in-process LRU, correct only while one history replica runs.
    redis_url: str | None = None
    # Every Redis call gives up after this long and the read goes to the database.
    redis_timeout: float = Field(default=0.1, gt=0, le=5)
    redis_max_connections: int = Field(default=64, ge=1)
    # While Redis is down, how often one probe checks whether it is back.
    redis_retry_interval: float = Field(default=1.0, gt=0, le=60)
    cache_ttl_seconds: int = Field(default=300, ge=1)
    cache_max_entries: int = Field(default=10_000, ge=1)
    # Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    cache_namespace: str = Field(default="chatbus:history", min_length=1, max_length=64)

    # The relay publishes pending outbox rows after each commit and at least this often.
    outbox_interval: float = Field(default=2.0, gt=0, le=300)
    outbox_retention_seconds: int = Field(default=86_400, ge=60)
