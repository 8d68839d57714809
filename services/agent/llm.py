"""The model behind the agent: OpenAI's SDK, streaming chat completions as text pieces."""

from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal, TypedDict, cast

import openai

from services.agent.config import Settings
from services.agent.errors import LLMError

# Statuses worth another attempt; any other 4xx will fail the same way again.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


class ChatMessage(TypedDict):
    """One prompt message."""

    role: Literal["system", "user", "assistant"]
    content: str


class OpenAIChat:
    """Stream replies from an OpenAI-compatible server."""

    def __init__(self, settings: Settings) -> None:
        self.model = settings.llm_model
        self.client = openai.AsyncOpenAI(
            api_key=settings.api_key,
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout,
            max_retries=settings.llm_max_retries,
        )

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        """Yield the reply's text pieces as the model writes them."""
        try:
            stream = await self.client.chat.completions.create(
                model=self.model, messages=cast(Any, list(messages)), stream=True
            )
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
        except openai.APIStatusError as exc:
            retryable = exc.status_code >= 500 or exc.status_code in RETRYABLE_STATUSES
            raise LLMError(
                f"model answered {exc.status_code}: {exc.message}", retryable=retryable
            ) from exc
        except openai.APITimeoutError as exc:
            raise LLMError("model call timed out") from exc
        except openai.APIConnectionError as exc:
            raise LLMError(f"model unreachable: {exc}") from exc
        except openai.OpenAIError as exc:
            raise LLMError(f"model call failed: {exc}") from exc

    async def close(self) -> None:
        """Close the SDK's connections."""
        await self.client.close()
