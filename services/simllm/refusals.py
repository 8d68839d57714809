"""Refusals of request options, as servers that are not OpenAI answer them.

With ``LLM_SIM_REFUSE`` naming options, a request that uses one is answered 400
with the message a real server sends for it (rules in :mod:`services.simllm.model`).
"""

from collections.abc import Collection, Mapping
from typing import Any

MESSAGES = {
    # OpenAI, for a model without structured outputs
    "json_schema": "Invalid parameter: 'response_format' of type 'json_schema' is not "
    "supported with this model.",
    "json_object": "Invalid parameter: 'response_format' of type 'json_object' is not "
    "supported with this model.",
    # Azure OpenAI, on an API version before stream_options
    "stream_options": "Unrecognized request argument supplied: stream_options",
    # Ollama, for a model without tool support
    "tools": "{model} does not support tools",
}


def refusal_for(body: Mapping[str, Any], refused: Collection[str]) -> str | None:
    """Return the error message for the first refused option the request uses, or None."""
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    used = {
        "json_schema": kind == "json_schema",
        "json_object": kind == "json_object",
        "stream_options": body.get("stream_options") is not None,
        "tools": bool(body.get("tools")),
    }
    for option, message in MESSAGES.items():
        if option in refused and used[option]:
            return message.format(model=body.get("model", "model"))
    return None
