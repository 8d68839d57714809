"""Settings of the memory service, read once from the environment."""

from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from services.runtime.config import ServiceSettings

PLACEHOLDER_API_KEY = "not-needed"  # the SDK insists on a key even for keyless local servers


class Settings(ServiceSettings):
    """Bus settings plus the database, the model, and how memory generation is retried."""

    database_url: str = "sqlite+aiosqlite:///.chatbus/chatbus.db"
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)
    # Recall and delete requests handled at once; each holds at most one connection.
    request_concurrency: int = Field(default=32, ge=1, le=1000)

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = Field(default=60.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0)

    memory_max_attempts: int = Field(default=3, ge=1)
    memory_max_per_session: int = Field(default=10, ge=0, le=100)
    memory_retry_delay: float = Field(default=5.0, ge=0, description="nak delay before a retry")
    memory_ack_wait: float = Field(default=60.0, gt=0, description="redelivery deadline")
    # Archived sessions summarised at once per replica (one pull batch, run together).
    memory_concurrency: int = Field(default=4, ge=1, le=100)
    memory_fetch_timeout: float = Field(default=5.0, gt=0, description="longest wait of one pull")
    # Publishing an event or a dead letter must not hold a delivery for long.
    event_publish_timeout: float = Field(default=5.0, gt=0, le=60)

    @field_validator("openai_api_key", "openai_base_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `OPENAI_API_KEY=` in a compose file means "no key", not an empty one.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _needs_a_model(self) -> Self:
        if self.openai_api_key is None and not self.openai_base_url:
            raise ValueError(
                "no model configured: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL "
                "(a compatible server); `chatbus up` starts the simulated model for you"
            )
        return self

    @property
    def api_key(self) -> str:
        """Return the key to hand the SDK (a placeholder for a keyless base URL)."""
        if self.openai_api_key is not None:
            return self.openai_api_key.get_secret_value()
        return PLACEHOLDER_API_KEY

    @property
    def heartbeat_interval(self) -> float:
        """Return how often a running generation tells JetStream it is still alive."""
        return self.memory_ack_wait / 3
