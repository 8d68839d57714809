"""What the simulated model does when a request offers ``tools``: deterministic tool calls.

The rules are documented in :mod:`services.simllm.model`; :func:`answer_for` picks, for
one request body, either the text to answer or the tool calls to make.
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.simllm import model
from services.simllm.memories import memory_answer, wants_memory_extraction

LOOP_DIRECTIVE = "[sim:loop-tools]"
UNKNOWN_DIRECTIVE = "[sim:unknown-tool]"
BAD_ARGS_DIRECTIVE = "[sim:bad-tool-args]"
UNKNOWN_TOOL = "no_such_tool"
# [sim:call=NAME] or [sim:call=NAME {"json": "arguments"}]
_CALL = re.compile(r"\[sim:call=([A-Za-z0-9_-]+)(?:\s+(\{.*?\}))?\]", re.DOTALL)
_SEARCH = re.compile(r"search history for\s+(.+)", re.IGNORECASE | re.DOTALL)
_RECALL = re.compile(r"recall|remember", re.IGNORECASE)
_ABOUT = re.compile(r"\babout\s+([\w'-]+)", re.IGNORECASE)
_TRAILING = " \t\n.,;:!?\"'"


@dataclass(frozen=True)
class SimToolCall:
    """One tool call the simulated model makes: a name and its arguments as JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Answer:
    """The simulated model's answer: text, or tool calls (then ``text`` is empty)."""

    text: str
    calls: tuple[SimToolCall, ...] = ()


def offered_tools(body: Mapping[str, Any]) -> list[str]:
    """Return the names of the function tools a request offers, in order."""
    names = []
    for entry in body.get("tools") or ():
        function = entry.get("function") if isinstance(entry, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def after_last_user(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return the messages that follow the last user message."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return list(messages[index + 1 :])
    return list(messages)


def _call(name: str, arguments: Mapping[str, Any]) -> SimToolCall:
    return SimToolCall(name, json.dumps(dict(arguments)))


def tool_calls_for(
    messages: Sequence[Mapping[str, Any]], offered: Sequence[str]
) -> tuple[SimToolCall, ...]:
    """Return the tool calls the simulated model makes, or none to answer with text."""
    if not offered:
        return ()
    text = model.last_user_text(messages)
    if LOOP_DIRECTIVE in text:
        return (_call(offered[0], {"query": "loop"}),)
    if any(m.get("role") == "tool" for m in after_last_user(messages)):
        return ()
    if UNKNOWN_DIRECTIVE in text:
        return (_call(UNKNOWN_TOOL, {}),)
    if BAD_ARGS_DIRECTIVE in text:
        return (_call(offered[0], {"query": 42}),)
    if (wanted := _CALL.search(text)) and wanted.group(1) in offered:
        return (SimToolCall(wanted.group(1), wanted.group(2) or "{}"),)
    if (search := _SEARCH.search(text)) and "search_history" in offered:
        return (_call("search_history", {"query": search.group(1).strip(_TRAILING)}),)
    if _RECALL.search(text) and "recall_memories" in offered:
        about = _ABOUT.search(text)
        query = about.group(1).strip(_TRAILING) if about else ""
        return (_call("recall_memories", {"query": query}),)
    return ()


def tool_results(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Return (tool name, result) of each tool message after the last user message."""
    names: dict[str, str] = {}
    results = []
    for message in after_last_user(messages):
        for call in message.get("tool_calls") or ():
            if isinstance(call, Mapping):
                function = call.get("function") or {}
                names[str(call.get("id"))] = str(function.get("name", "?"))
        if message.get("role") == "tool":
            name = names.get(str(message.get("tool_call_id")), "?")
            results.append((name, model.text_of(message.get("content"))))
    return results


def answer_for(body: Mapping[str, Any]) -> Answer:
    """Return what the simulated model answers to one chat completion request body."""
    messages: list[dict[str, Any]] = [m for m in body.get("messages") or () if isinstance(m, dict)]
    if wants_memory_extraction(body):
        return Answer(memory_answer(body, messages))
    calls = tool_calls_for(messages, offered_tools(body))
    if calls:
        return Answer("", calls)
    text = model.reply_for(messages)
    for name, result in tool_results(messages):
        text += f" [{name}: {result}]"
    return Answer(text)
