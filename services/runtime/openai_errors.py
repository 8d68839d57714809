"""What went wrong in a call through the OpenAI SDK, and whether to try again: one mapping.

The SDK raises (3.x)::

    OpenAIError
     ├── APIError
     │    ├── APIStatusError      the server answered 4xx/5xx (``status_code``)
     │    └── APIConnectionError  no answer
     │         └── APITimeoutError
     └── ...                      anything else the SDK refuses

408, 409, 429 and every 5xx are worth another attempt; any other 4xx will fail
the same way again. A service raises its own error with the message and the
flag: ``raise LLMError(*describe(exc)) from exc`` style.
"""

import openai

RETRYABLE_STATUSES = frozenset({408, 409, 429})


def describe(exc: openai.OpenAIError) -> tuple[str, bool]:
    """Return (a message safe to log and store, whether another attempt may succeed)."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return f"model answered {status}: {exc.message}", (
            status >= 500 or status in RETRYABLE_STATUSES
        )
    if isinstance(exc, openai.APITimeoutError):
        return "model call timed out", True
    if isinstance(exc, openai.APIConnectionError):
        return f"model unreachable: {exc}", True
    return f"model call failed: {exc}", True
