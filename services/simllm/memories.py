"""What the simulated model answers to a memory-extraction request: a deterministic rule.

The memory service asks for structured output with ``response_format``
``{"type": "json_schema", "json_schema": {"name": "memory_extraction", ...}}``
(see :func:`wants_memory_extraction`). The simulated answer, as the message
content, is the JSON of :func:`memory_extraction_for`::

    every user message whose text, stripped, starts with "I ", "I'm", "I am" or
    "My " (any case) becomes one memory "The user said: <stripped text>", in
    order, at most 10  ->  {"memories": [...]}

e.g. ``[{"role": "user", "content": "I like tea"}, {"role": "user",
"content": "hello"}]`` gives ``{"memories": ["The user said: I like tea"]}``.
System and assistant messages are never remembered.
"""

from collections.abc import Mapping
from typing import Any

from services.simllm.model import text_of

SCHEMA_NAME = "memory_extraction"
MAX_MEMORIES = 10
PREFIXES = ("i ", "i'm", "i am", "my ")


def wants_memory_extraction(body: Mapping[str, Any]) -> bool:
    """Tell whether a chat completion request asks for the memory-extraction schema."""
    response_format = body.get("response_format")
    if not isinstance(response_format, Mapping):
        return False
    if response_format.get("type") != "json_schema":
        return False
    schema = response_format.get("json_schema")
    return isinstance(schema, Mapping) and schema.get("name") == SCHEMA_NAME


def is_memorable(text: str) -> bool:
    """Tell whether a user message's text is a statement about the user."""
    return text.strip().lower().startswith(PREFIXES)


def memory_extraction_for(messages: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Return the simulated model's memory extraction of a conversation."""
    memories: list[str] = []
    for message in messages:
        if message.get("role") != "user":
            continue
        text = text_of(message.get("content")).strip()
        if is_memorable(text):
            memories.append(f"The user said: {text}")
        if len(memories) == MAX_MEMORIES:
            break
    return {"memories": memories}
