"""Settings of the simulated model server."""

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Request options the simulation can be told to refuse, as some compatible servers do.
REFUSABLE = frozenset({"json_schema", "json_object", "stream_options", "tools"})


class Settings(BaseSettings):
    """Where the simulated model listens and how fast it answers."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    simllm_host: str = "127.0.0.1"
    simllm_port: int = Field(default=8090, ge=0, le=65535)
    llm_sim_latency: float = Field(default=0.3, ge=0, description="seconds before the first token")
    llm_sim_tokens_per_second: float = Field(default=40.0, ge=0, description="0 = no pacing")
    sim_keep_requests: int = Field(default=200, ge=1, description="request bodies kept for tests")
    # Imitate a server that does not support these options (a comma list in the environment:
    # LLM_SIM_REFUSE=json_schema,stream_options); see services/simllm/model.py.
    llm_sim_refuse: Annotated[frozenset[str], NoDecode] = frozenset()
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator("llm_sim_refuse", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = {part.strip() for part in value.split(",") if part.strip()}
        return value

    @field_validator("llm_sim_refuse")
    @classmethod
    def _known(cls, value: frozenset[str]) -> frozenset[str]:
        if unknown := value - REFUSABLE:
            raise ValueError(f"cannot refuse {sorted(unknown)}: one of {sorted(REFUSABLE)}")
        return value
