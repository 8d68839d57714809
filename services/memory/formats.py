"""The ways of asking a model for a memory extraction, strictest first, and reading the answer.

::

    json_schema   response_format json_schema "memory_extraction" (strict)
    json_object   response_format json_object, the schema spelled out in the prompt
    prompt        no response_format: the prompt alone asks for the JSON

A server that refuses a ``response_format`` (:func:`services.runtime.llmcompat.refuses`)
gets the next way at once; the answer of every way is validated by the same
:class:`MemoryExtraction`. A chatty model in ``prompt`` mode may wrap its JSON in a
Markdown fence or a sentence: the outermost JSON object is read out of the text.
"""

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from contracts.history import MessageRecord
from services.memory.errors import InvalidModelOutput
from services.runtime.llmcompat import Feature

Mode = Literal["json_schema", "json_object", "prompt"]
MODES: tuple[Mode, ...] = ("json_schema", "json_object", "prompt")
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
# The schema's name stays in the text: servers and the simulated model recognise it there.
JSON_INSTRUCTION = (
    " Answer with one JSON object and nothing else, valid against this JSON schema "
    "({name}): {schema}"
)


class MemoryExtraction(BaseModel):
    """The model's answer: the memories of one conversation."""

    model_config = ConfigDict(extra="forbid")

    memories: list[str]


def feature_of(mode: Mode) -> Feature | None:
    """Return the request option a mode depends on (None: it asks for nothing special)."""
    return None if mode == "prompt" else mode


def next_mode(mode: Mode) -> Mode | None:
    """Return the way to try after ``mode`` was refused, or None after the last."""
    index = MODES.index(mode)
    return MODES[index + 1] if index + 1 < len(MODES) else None


def request(mode: Mode, messages: Sequence[MessageRecord], limit: int) -> dict[str, Any]:
    """Return the chat completion parameters (messages, response_format) of one way."""
    system = SYSTEM_PROMPT.format(limit=limit)
    if mode != "json_schema":
        schema = json.dumps(MemoryExtraction.model_json_schema(), separators=(",", ":"))
        system += JSON_INSTRUCTION.format(name=SCHEMA_NAME, schema=schema)
    prompt = [{"role": "system", "content": system}]
    prompt += [{"role": m.role, "content": m.content} for m in messages]
    params: dict[str, Any] = {"messages": prompt}
    if mode == "json_schema":
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": SCHEMA_NAME,
                "strict": True,
                "schema": MemoryExtraction.model_json_schema(),
            },
        }
    elif mode == "json_object":
        params["response_format"] = {"type": "json_object"}
    return params


def parse(content: str | None, mode: Mode = "json_schema") -> list[str]:
    """Validate the model's answer, or raise :class:`InvalidModelOutput`."""
    if not content:
        raise InvalidModelOutput("model answered no content")
    text = content if mode == "json_schema" else _json_object_in(content)
    try:
        return MemoryExtraction.model_validate_json(text).memories
    except ValidationError as exc:
        raise InvalidModelOutput(
            f"model answer ({mode}) is not a MemoryExtraction: {exc}"
        ) from exc


def _json_object_in(text: str) -> str:
    """Return the outermost ``{...}`` of a text (the text itself when there is none)."""
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text
