"""Settings of the agent, read once from the environment."""

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.runtime.config import ServiceSettings

DEFAULT_SYSTEM_PROMPT = (
    "You are {persona}, a helpful assistant. Answer clearly and briefly, "
    "and use the earlier messages of the conversation as context."
)
PLACEHOLDER_API_KEY = "not-needed"  # the SDK insists on a key even for keyless local servers


class McpServerSettings(BaseModel):
    """One MCP tool server: a command to run (stdio) or a streamable-HTTP URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Namespaces its tools (`<name>__<tool>`): OpenAI tool names allow [A-Za-z0-9_-]{1,64}.
    name: str = Field(pattern=r"^[A-Za-z0-9-]{1,24}$")
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = Field(default=None, pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    # Kept for tool approval (not there yet): listed in GET /api/tools, not enforced.
    requires_approval: bool = False

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name}: give either `command` or `url`")
        return self


class Settings(ServiceSettings):
    """Where the model is, how many jobs run at once, how often they are retried and ordered."""

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = Field(default=60.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0)
    # Ask for token usage in the last streamed chunk (`stream_options.include_usage`). A
    # server that refuses the option is recognised and no longer asked (llm.py); false
    # never asks at all.
    llm_stream_usage: bool = True
    agent_concurrency: int = Field(default=200, ge=1, description="jobs in flight per replica")
    agent_ack_wait: float = Field(default=30.0, gt=0)
    agent_max_attempts: int = Field(default=3, ge=1)
    agent_context_messages: int = Field(default=20, ge=0, le=199)
    agent_context_tokens: int = Field(
        default=3000, ge=0, description="token budget of earlier messages (~4 chars a token)"
    )
    agent_memory_limit: int = Field(default=20, ge=0, le=200, description="memories in the prompt")
    agent_tool_rounds: int = Field(default=4, ge=0, description="tool rounds before a job fails")
    agent_delta_interval: float = Field(
        default=0.05, ge=0, le=5, description="seconds of reply text gathered into one delta"
    )
    agent_system_prompt: str = DEFAULT_SYSTEM_PROMPT
    agent_retry_delay: float = Field(default=2.0, ge=0, description="nak delay before a retry")
    agent_fetch_batch: int = Field(default=50, ge=1, description="most messages per pull request")
    agent_fetch_timeout: float = Field(default=1.0, gt=0, description="longest wait of one pull")
    # Shared by all replicas: the most job messages delivered and not yet settled. Jobs waiting
    # for their turn in a session hold a delivery too, so keep it >= concurrency x replicas.
    agent_max_ack_pending: int = Field(default=10_000, ge=1)
    agent_order_wait: float = Field(
        default=60.0, ge=0,
        description="how long a job watches its session's earlier job before it hands its "
        "slot back (it is delivered again after AGENT_ORDER_RETRY_DELAY)",
    )
    agent_order_retry_delay: float = Field(
        default=1.0, ge=0, description="nak delay of a job that is not its session's turn yet"
    )
    agent_shutdown_grace: float = Field(
        default=20.0, ge=0, description="how long running jobs may finish after SIGTERM"
    )
    # MCP tool servers (AGENT_MCP_SERVERS: a JSON list), their tools offered next to ours.
    agent_mcp_servers: tuple[McpServerSettings, ...] = ()
    agent_mcp_call_timeout: float = Field(default=30.0, gt=0, description="seconds per tool call")
    agent_mcp_connect_timeout: float = Field(default=10.0, gt=0)
    agent_mcp_result_chars: int = Field(
        default=4000, ge=100, description="longest tool result put in the prompt"
    )
    agent_mcp_retry_initial: float = Field(default=1.0, gt=0, description="first reconnect delay")
    agent_mcp_retry_max: float = Field(default=60.0, gt=0, description="longest reconnect delay")
    agent_mcp_ping_interval: float = Field(
        default=15.0, gt=0, description="how often an idle connection is checked"
    )

    @field_validator("openai_api_key", "openai_base_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # Compose and shells pass `OPENAI_API_KEY=` for "no key": treat it as absent.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _needs_a_model(self) -> Self:
        if self.openai_api_key is None and not self.openai_base_url:
            raise ValueError(
                "no model configured: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL "
                "(a compatible server); `chatbus up` starts the simulated model for you"
            )
        return self

    @model_validator(mode="after")
    def _distinct_mcp_names(self) -> Self:
        names = [server.name for server in self.agent_mcp_servers]
        if len(names) != len(set(names)):
            raise ValueError("AGENT_MCP_SERVERS: every server needs a name of its own")
        return self

    @model_validator(mode="after")
    def _room_for_the_workers(self) -> Self:
        if self.agent_max_ack_pending < self.agent_concurrency:
            raise ValueError(
                "AGENT_MAX_ACK_PENDING must be at least AGENT_CONCURRENCY "
                "(the server would never hand this replica enough jobs to fill its workers)"
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
        """Return how often a running job tells JetStream it is still alive."""
        return self.agent_ack_wait / 3
