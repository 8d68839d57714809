"""Settings of the simulated model server."""

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the simulated model listens and how fast it answers."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    simllm_host: str = "127.0.0.1"
    simllm_port: int = Field(default=8090, ge=0, le=65535)
    llm_sim_latency: float = Field(default=0.3, ge=0, description="seconds before the first token")
    llm_sim_tokens_per_second: float = Field(default=40.0, ge=0, description="0 = no pacing")
    sim_keep_requests: int = Field(default=200, ge=1, description="request bodies kept for tests")
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
