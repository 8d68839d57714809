"""The model behind memory generation: one chat completion per session, in the strictest
way the server accepts (:mod:`services.memory.formats`)."""

from collections.abc import Callable, Sequence
from typing import Any, cast

import openai

from contracts.history import MessageRecord
from services.memory import formats
from services.memory.config import Settings
from services.memory.errors import InvalidModelOutput, ModelFailed
from services.memory.formats import MemoryExtraction, Mode, parse
from services.runtime.llmcompat import ModelQuirks, refuses
from services.runtime.openai_errors import describe as describe_openai_error

__all__ = ["MemoryExtraction", "OpenAIExtractor", "parse", "prompt", "response_format"]


def response_format() -> dict[str, Any]:
    """Return the structured-output request for a :class:`MemoryExtraction`."""
    fmt: dict[str, Any] = formats.request("json_schema", (), 0)["response_format"]
    return fmt


def prompt(messages: Sequence[MessageRecord], limit: int) -> list[dict[str, str]]:
    """Build the prompt: the instructions, then the conversation oldest first."""
    found: list[dict[str, str]] = formats.request("json_schema", messages, limit)["messages"]
    return found


class OpenAIExtractor:
    """Ask an OpenAI-compatible server for the memories of a conversation."""

    def __init__(
        self,
        settings: Settings,
        on_usage: Callable[[Any], None] | None = None,
        quirks: ModelQuirks | None = None,
    ) -> None:
        self.on_usage = on_usage  # told the token usage the server reports
        self.model = settings.llm_model
        self.limit = settings.memory_max_per_session
        self.quirks = quirks or ModelQuirks("memory")  # the way each model accepted, kept
        self.client = openai.AsyncOpenAI(
            api_key=settings.api_key,
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout,
            max_retries=settings.llm_max_retries,
        )

    async def extract(self, messages: Sequence[MessageRecord]) -> list[str]:
        """Return the memories the model finds in the conversation.

        Asks the strictest way the model has not refused; a refusal moves to the next
        way at once (remembered for this model), within the same attempt.
        """
        mode = cast(Mode, self.quirks.get(self.model, "response_format", "json_schema"))
        while True:
            try:
                return await self._extract(messages, mode)
            except ModelFailed as exc:
                cause = exc.__cause__
                feature = formats.feature_of(mode)
                lower = formats.next_mode(mode)
                if not (
                    isinstance(cause, openai.APIStatusError)
                    and feature is not None
                    and lower is not None
                    and refuses(cause, feature)
                ):
                    raise
                self.quirks.choose(self.model, "response_format", lower, str(exc))
                mode = lower

    async def _extract(self, messages: Sequence[MessageRecord], mode: Mode) -> list[str]:
        params = formats.request(mode, messages, self.limit)
        try:
            completion = await self.client.chat.completions.create(
                model=self.model, **cast(Any, params)
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
        return parse(message.content, mode)

    async def close(self) -> None:
        """Close the SDK's connections."""
        await self.client.close()
