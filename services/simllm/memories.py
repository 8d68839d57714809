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

A server that refuses ``json_schema`` is asked in a weaker way: ``response_format``
``json_object``, or none at all, with the schema's name ``memory_extraction`` in
the system prompt. Both are recognised too; without a ``response_format`` the
JSON comes inside a Markdown fence after a sentence, as chatty models write it.
A conversation with ``[sim:bad-json]`` in a user message is answered with text
that is no JSON at all, in every way.
"""

import json
from collections.abc import Mapping
from typing import Any

from services.simllm.model import text_of

SCHEMA_NAME = "memory_extraction"
BAD_JSON_DIRECTIVE = "[sim:bad-json]"
MAX_MEMORIES = 10
PREFIXES = ("i ", "i'm", "i am", "my ")


def wants_memory_extraction(body: Mapping[str, Any]) -> bool:
    """Tell whether a chat completion request asks for a memory extraction, in any way."""
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_schema":
        schema = response_format.get("json_schema") if response_format else None
        return isinstance(schema, Mapping) and schema.get("name") == SCHEMA_NAME
    if kind not in (None, "text", "json_object"):
        return False
    messages = body.get("messages") or ()
    return any(
        isinstance(m, Mapping) and m.get("role") == "system"
        and SCHEMA_NAME in text_of(m.get("content"))
        for m in messages
    )


def memory_answer(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> str:
    """Return the answer's text: the JSON, fenced in prose when no format was asked for."""
    if any(BAD_JSON_DIRECTIVE in text_of(m.get("content")) for m in messages):
        return "I would rather not say."
    found = json.dumps(memory_extraction_for(messages))
    if isinstance(body.get("response_format"), Mapping):
        return found
    return f"Here is what I would remember:\n```json\n{found}\n```"


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
