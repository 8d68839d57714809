"""Settings of ``chatbus up``: where state lives and which parts to start."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "chatbus-dev-secret-change-me"


class LauncherSettings(BaseSettings):
    """Environment of the launcher; what it does not use passes through to the services."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    state_dir: Path = Field(default=Path(".chatbus"), alias="CHATBUS_STATE_DIR")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    nats_url: str | None = None
    nats_port: int = Field(default=0, alias="CHATBUS_NATS_PORT", ge=0, le=65535)
    database_url: str | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    llm_sim_latency: float = Field(default=0.3, ge=0)
    llm_sim_tokens_per_second: float = Field(default=40.0, ge=0)
    jwt_secret: str = DEV_JWT_SECRET
    jwt_audience: str | None = None  # the dev token carries them, so the gateway accepts it
    jwt_issuer: str | None = None
    ready_timeout: float = Field(default=60.0, alias="CHATBUS_READY_TIMEOUT", gt=0)
    stop_timeout: float = Field(default=15.0, alias="CHATBUS_STOP_TIMEOUT", gt=0)

    @property
    def simulated_llm(self) -> bool:
        """Tell whether no real model is configured, so the simulated one must run."""
        return not self.openai_api_key and not self.openai_base_url

    @property
    def sqlite_url(self) -> str:
        """Return the default store: a SQLite file in the state folder."""
        return f"sqlite+aiosqlite:///{(self.state_dir / 'chatbus.db').resolve()}"
