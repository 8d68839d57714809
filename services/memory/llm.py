"""The model behind memory generation: one structured-output chat completion per session."""

from collections.abc import Callable, Sequence
from typing import Any, cast

import openai
from pydantic import BaseModel, ConfigDict, ValidationError

from contracts.history import MessageRecord
from services.memory.config import Settings
from services.memory.errors import InvalidModelOutput, ModelFailed
from services.runtime.openai_errors import describe as describe_openai_error

SCHEMA_NAME = "memory_extraction"
SYSTEM_PROMPT = (
    "You maintain long-term memories about a user from their conversations with an "
    "assistant. Read the conversation that follows and list what is worth remembering "
    "about the user: short, self-contained facts (preferences, circumstances, plans, "
    "people and things that matter to them), each understandable without the "
    'conversation, written in the third person ("The user ..."). List at most {limit}. '
    "Leave out small talk, the assistant's own statements and anything uncertain. "
    "Answer with an empty list when there is nothing worth remembering."
)


class MemoryExtraction(BaseModel):
    """The model's answer: the memories of one conversation."""

    model_config = ConfigDict(extra="forbid")

    memories: list[str]


def response_format() -> dict[str, Any]:
    """Return the structured-output request for a :class:`MemoryExtraction`."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": SCHEMA_NAME,
            "strict": True,
            "schema": MemoryExtraction.model_json_schema(),
        },
    }


def prompt(messages: Sequence[MessageRecord], limit: int) -> list[dict[str, str]]:
    """Build the prompt: the instructions, then the conversation oldest first."""
    head = {"role": "system", "content": SYSTEM_PROMPT.format(limit=limit)}
    return [head, *({"role": m.role, "content": m.content} for m in messages)]


def parse(content: str | None) -> list[str]:
    """Validate the model's answer, or raise :class:`InvalidModelOutput`."""
    if not content:
        raise InvalidModelOutput("model answered no content")
    try:
        return MemoryExtraction.model_validate_json(content).memories
    except ValidationError as exc:
        raise InvalidModelOutput(f"model answer is not a MemoryExtraction: {exc}") from exc


class OpenAIExtractor:
    """Ask an OpenAI-compatible server for the memories of a conversation."""

    def __init__(
        self, settings: Settings, on_usage: Callable[[Any], None] | None = None
    ) -> None:
        self.on_usage = on_usage  # told the token usage the server reports
        self.model = settings.llm_model
        self.limit = settings.memory_max_per_session
        self.client = openai.AsyncOpenAI(
            api_key=settings.api_key,
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout,
            max_retries=settings.llm_max_retries,
        )

    async def extract(self, messages: Sequence[MessageRecord]) -> list[str]:
        """Return the memories the model finds in the conversation."""
        try:
            completion = await self.client.chat.completions.create(
                model=self.model,
                messages=cast(Any, prompt(messages, self.limit)),
                response_format=cast(Any, response_format()),
            )
        except openai.OpenAIError as exc:
            reason, retryable = describe_openai_error(exc)
            raise ModelFailed(reason, retryable=retryable) from exc
        if self.on_usage is not None:
            self.on_usage(completion.usage)
        if not completion.choices:
            raise InvalidModelOutput("model answered no choices")
        message = completion.choices[0].message
        if message.refusal:
            raise InvalidModelOutput(f"model refused: {message.refusal}")
        return parse(message.content)

    async def close(self) -> None:
        """Close the SDK's connections."""
        await self.client.close()
